#!/usr/bin/env python3
"""A randomly initialised model with SmolVLM-256M's shapes, to check parity and measure speed at full size.

Writes OUT/ (default /tmp/smolvlm-256m-random): config.json, model.safetensors (bfloat16, ~0.5 GB),
preprocessor_config.json, image.png (512x512), token_ids.txt (SmolVLM's prompt for one global image, ids only:
no tokenizer), and expected.safetensors (transformers' float32 logits and per-layer K/V, computed from the
bfloat16-rounded weights widened to float32, as kvc-run computes).

    python3 scripts/reference/smolvlm_scale_check.py [OUT]
    kvc-run --model OUT --image OUT/image.png --token-ids $(cat OUT/token_ids.txt) --dump OUT/ours.safetensors
    python3 scripts/reference/smolvlm_scale_check.py --compare OUT
"""
import os
import sys

import numpy as np
import torch
from safetensors.numpy import load_file
from safetensors.torch import save_file
from transformers import Idefics3Config, Idefics3ForConditionalGeneration

sys.path.insert(0, os.path.dirname(__file__))
from smolvlm_tiny_reference import cache_tensors, redraw, run, test_image  # noqa: E402

VISION = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              image_size=512, patch_size=16)
TEXT = dict(vocab_size=49280, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
            num_key_value_heads=3, max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0,
            tie_word_embeddings=False)
IMAGE_TOKEN_ID, FAKE, GLOBAL, START = 49190, 49189, 49152, 1


def make(out):
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(7)
    config = Idefics3Config(vision_config=VISION, text_config=TEXT, image_token_id=IMAGE_TOKEN_ID, scale_factor=4)
    model = Idefics3ForConditionalGeneration(config).eval()
    redraw(model, torch.Generator().manual_seed(7))
    model = model.to(torch.bfloat16)
    model.save_pretrained(out)
    with open(os.path.join(out, "preprocessor_config.json"), "w") as f:
        f.write('{"image_processor_type": "Idefics3ImageProcessor", "do_image_splitting": false, '
                '"max_image_size": {"longest_edge": 512}, "size": {"longest_edge": 512}, '
                '"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "rescale_factor": 0.00392156862745098}')
    image = test_image(512)
    image.save(os.path.join(out, "image.png"))
    ids = [START, 4093, 42, FAKE, GLOBAL] + [IMAGE_TOKEN_ID] * 64 + [FAKE, 1780, 314, 253, 1345, 47, 49279, 198, 9519, 42]
    with open(os.path.join(out, "token_ids.txt"), "w") as f:
        f.write(",".join(map(str, ids)))
    # A fresh float32 model with the bfloat16-rounded weights: `model.float()` would keep the rotary frequencies
    # (a buffer, rounded to bfloat16 by `.to`) and put position-dependent errors of ~5% into the reference keys.
    rounded = {name: value.float() for name, value in model.state_dict().items()}
    model = Idefics3ForConditionalGeneration(config).eval()
    model.load_state_dict(rounded)
    pixels = (torch.tensor(np.asarray(image), dtype=torch.float32).permute(2, 0, 1) / 255 - 0.5) / 0.5
    logits, cache = run(model, input_ids=torch.tensor([ids]), pixel_values=pixels[None, None])
    expected = {"logits": logits}
    expected.update(cache_tensors(cache, TEXT["num_hidden_layers"]))
    save_file(expected, os.path.join(out, "expected.safetensors"))


def compare(out):
    ours, ref = load_file(os.path.join(out, "ours.safetensors")), load_file(os.path.join(out, "expected.safetensors"))
    worst = {}
    for name, r in ref.items():
        error = float(np.abs(ours[name] - r).max() / np.abs(r).max())
        kind = "logits" if name == "logits" else name.split(".")[-1]
        worst[kind] = max(worst.get(kind, 0.0), error)
    top1 = float((ours["logits"].argmax(-1) == ref["logits"].argmax(-1)).mean())
    print({"max_relative_error": worst, "top1_agreement": top1, "tokens": ref["logits"].shape[0]})


if __name__ == "__main__":
    if sys.argv[1:2] == ["--compare"]:
        compare(sys.argv[2] if len(sys.argv) > 2 else "/tmp/smolvlm-256m-random")
    else:
        make(sys.argv[1] if len(sys.argv) > 1 else "/tmp/smolvlm-256m-random")
