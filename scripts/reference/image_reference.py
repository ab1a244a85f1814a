#!/usr/bin/env python3
"""Independent reference pixels for the PNG/JPEG decoders in KVCVision, decoded with Pillow (and pypng).

    pip install pillow pypng
    python3 scripts/reference/image_reference.py [--assets assets] [--out Tests/KVCVisionTests/Fixtures]

Writes into the fixture directory:
  - small PNG files covering the colour types the decoder converts to RGB (grey, grey+alpha, palette, palette with
    tRNS, RGB, RGBA, 16-bit RGB, interlaced) and JPEG files (baseline RGB, greyscale, progressive);
  - reference.json: for each of them the RGB pixels Pillow decodes (alpha composited onto white), and for a few
    shipped easy-VQA images the full RGB bytes (hex) or sampled pixels, plus the dataset counts.

Transparent pixels in the fixtures are either fully opaque or fully transparent, so the expected RGB does not depend
on the colour space a decoder composites in. 16-bit samples are stored as v * 257, which every sane 16 -> 8 bit
conversion (shift or divide by 257) maps back to v exactly.
"""
import argparse
import io
import json
import os
import random

import png  # pypng, for the 16-bit file Pillow cannot write
from PIL import Image

W, H = 7, 5


def pattern(rng, channels):
    return [[rng.randrange(256) for _ in range(W * channels)] for _ in range(H)]


def rgb_of(img):
    """Pillow's decode, alpha composited onto white."""
    img.load()
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def flat_pixels(img):
    return list(rgb_of(img).tobytes())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--assets", default="assets")
    ap.add_argument("--out", default="Tests/KVCVisionTests/Fixtures")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = random.Random(20261125)
    cases = {}

    def save(name, img, **kw):
        path = os.path.join(args.out, name)
        img.save(path, **kw)
        with Image.open(path) as reread:
            cases[name] = {"width": reread.width, "height": reread.height, "rgb": flat_pixels(reread)}

    rgb = Image.frombytes("RGB", (W, H), bytes(v for row in pattern(rng, 3) for v in row))
    save("rgb.png", rgb)
    gray = Image.frombytes("L", (W, H), bytes(v for row in pattern(rng, 1) for v in row))
    save("gray.png", gray)

    alpha = bytes(rng.choice([0, 255]) for _ in range(W * H))
    la = Image.merge("LA", (gray, Image.frombytes("L", (W, H), alpha)))
    save("gray_alpha.png", la)
    rgba = rgb.copy()
    rgba.putalpha(Image.frombytes("L", (W, H), alpha))
    save("rgba.png", rgba)

    palette = [rng.randrange(256) for _ in range(16 * 3)]
    pal = Image.frombytes("P", (W, H), bytes(rng.randrange(16) for _ in range(W * H)))
    pal.putpalette(palette)
    save("palette.png", pal)
    save("palette_trns.png", pal, transparency=3)

    # 16-bit RGB and Adam7-interlaced RGB through pypng.
    rows8 = pattern(rng, 3)
    path16 = os.path.join(args.out, "rgb16.png")
    with open(path16, "wb") as f:
        png.Writer(W, H, greyscale=False, bitdepth=16).write(f, [[v * 257 for v in row] for row in rows8])
    cases["rgb16.png"] = {"width": W, "height": H, "rgb": [v for row in rows8 for v in row]}
    rowsi = pattern(rng, 3)
    pathi = os.path.join(args.out, "interlaced.png")
    with open(pathi, "wb") as f:
        png.Writer(W, H, greyscale=False, bitdepth=8, interlace=True).write(f, rowsi)
    with Image.open(pathi) as reread:
        assert flat_pixels(reread) == [v for row in rowsi for v in row]
        cases["interlaced.png"] = {"width": W, "height": H, "rgb": flat_pixels(reread)}

    # JPEG: a smooth gradient (a random pattern would be all ringing) at a size that is not a multiple of the MCU.
    jw, jh = 19, 13
    grad = Image.new("RGB", (jw, jh))
    grad.putdata([(x * 13 % 256, y * 19 % 256, (x * y * 3) % 256) for y in range(jh) for x in range(jw)])
    save("rgb.jpg", grad, quality=90)
    save("gray.jpg", grad.convert("L"), quality=90)
    save("progressive.jpg", grad, quality=85, progressive=True)

    # Shipped easy-VQA images: one in full, others sampled.
    easy = {}
    for split, image_id, full in [("train", 0, True), ("train", 3999, False), ("test", 0, False), ("test", 999, False)]:
        path = os.path.join(args.assets, "easy-vqa", split, "images", f"{image_id}.png")
        with Image.open(path) as img:
            data = rgb_of(img).tobytes()
            entry = {"split": split, "id": image_id, "width": img.width, "height": img.height, "mode": img.mode,
                     "byte_sum": sum(data)}
            if full:
                entry["rgb_hex"] = data.hex()
            samples = []
            for _ in range(16):
                x, y = rng.randrange(img.width), rng.randrange(img.height)
                i = (y * img.width + x) * 3
                samples.append([x, y, data[i], data[i + 1], data[i + 2]])
            entry["samples"] = samples
            easy[f"{split}/{image_id}"] = entry

    counts = {}
    for split in ("train", "test"):
        q = json.load(open(os.path.join(args.assets, "easy-vqa", split, "questions.json")))
        counts[split] = {"images": len(os.listdir(os.path.join(args.assets, "easy-vqa", split, "images"))),
                         "questions": len(q)}
    answers = [a.strip() for a in open(os.path.join(args.assets, "easy-vqa", "answers.txt")) if a.strip()]
    counts["answers"] = len(answers)

    with open(os.path.join(args.out, "reference.json"), "w") as f:
        json.dump({"decoder": f"Pillow {Image.__version__}, pypng {png.__version__}", "files": cases,
                   "easy_vqa": easy, "counts": counts}, f, separators=(",", ":"))
    print(f"wrote {len(cases)} files and {len(easy)} easy-VQA references to {args.out}")


if __name__ == "__main__":
    main()
