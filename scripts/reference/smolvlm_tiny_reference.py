#!/usr/bin/env python3
"""Tiny random SmolVLM (Idefics3) and Llama checkpoints with their reference outputs from Hugging Face transformers.

Writes, under OUT (default Tests/KVCSmolVLMTests/Fixtures):

  idefics3/   config.json, model.safetensors (float32), preprocessor_config.json, image.png,
              expected.safetensors: `logits` [T, vocab], `layers.i.key` / `layers.i.value` [kv_heads, T, head_dim]
              (keys after RoPE, as transformers' cache holds them), `input_ids` [T] (int64), `pixel_values`
              [3, H, W] (what the image processor produced).
  llama/      config.json, model-0000k-of-0000n.safetensors + model.safetensors.index.json (sharded on purpose),
              expected.safetensors with the same tensors for the token ids alone.

Weights are re-drawn at unit scale (normal / sqrt(fan_in), norms near 1) so activations are O(1) and relative
errors mean something; transformers' own init (std 0.02) makes every logit nearly zero.

    pip install transformers torch safetensors pillow
    python3 scripts/reference/smolvlm_tiny_reference.py [OUT]
"""
import json
import math
import os
import sys

import numpy as np
import torch
import transformers
from PIL import Image
from safetensors.torch import save_file
from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor, LlamaConfig,
                          LlamaForCausalLM, SmolVLMConfig, SmolVLMForConditionalGeneration)
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil as Idefics3ImageProcessor

SEED = 1234
# The parity prompt, in SmolVLM's chat format; the processor expands <image> into
# <fake_token_around_image><global-img> + 9 x <image> + <fake_token_around_image> (one global image, no tiles).
PROMPT = "<|im_start|>User:<image>What is the red shape in 2024?<end_of_utterance>\nAssistant:"
# Texts whose token ids the tokenizer test checks (digits split, spaces, punctuation, special tokens in text).
TOKENIZER_TEXTS = ["Hello world! The red circle is 12345 pixels wide.", "<|im_start|>user\nshape?<|im_end|>\n",
                   "  double  spaces\tand tabs, don't stop"]
# Sizes (width, height) for the resampling test: upscaling a wide image, downscaling a tall one.
RESIZE_CASES = {"resize_wide": (37, 23), "resize_tall": (70, 101)}
SPLIT_IMAGE = (100, 70)
CORPUS = ["the red circle is above the blue square", "what colour is the shape? it is green",
          "is there a triangle in the image? yes, there is", "numbers like 2024 and 12345 are split into digits",
          "Hello world, hello there. What is the shape in the picture?"] * 20


def make_tokenizer():
    """A small byte-level BPE like SmolLM2's (digits split one by one, then GPT-2 byte-level), with SmolVLM's
    added tokens, wrapped as transformers saves it (tokenizer.json)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    tile_markers = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    fast.add_special_tokens({"additional_special_tokens": ["<fake_token_around_image>", "<image>",
                                                           "<end_of_utterance>", "<global-img>"] + tile_markers})
    return fast


def text_config(layers, tie, vocab=128):
    return dict(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5,
                rope_theta=100000.0, tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def redraw(model, generator):
    """Unit-scale weights: matrices ~ N(0, 1/fan_in), vectors of norms ~ 1 + N(0, 0.1²), biases ~ N(0, 0.1²)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                fan_in = p.shape[1] if p.dim() == 2 else int(np.prod(p.shape[1:]))
                if "embed" in name:
                    fan_in = 1
                p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(fan_in))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=generator))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=generator))


def cache_tensors(cache, layers):
    """Per-layer keys/values of batch 0 as [kv_heads, T, head_dim] float32, whatever the cache class calls them."""
    out = {}
    for i in range(layers):
        if hasattr(cache, "layers"):
            k, v = cache.layers[i].keys, cache.layers[i].values
        else:
            k, v = cache[i]
        out[f"layers.{i}.key"] = k[0].float().contiguous()
        out[f"layers.{i}.value"] = v[0].float().contiguous()
    return out


def run(model, **inputs):
    with torch.no_grad():
        result = model(**inputs, use_cache=True)
    cache = getattr(result, "past_key_values", None) or getattr(result, "cache", None)
    return result.logits[0].float().contiguous(), cache


def test_image(size, height=None):
    """A deterministic picture with structure at every scale (gradients, a disc, stripes)."""
    height = height or size
    y, x = np.mgrid[0:height, 0:size].astype(np.float64)
    r = 255 * x / (size - 1)
    g = 255 * ((x - size / 2) ** 2 + (y - height / 3) ** 2 < (min(size, height) / 4) ** 2)
    b = 127.5 + 127.5 * np.sin(y / 3.0)
    return Image.fromarray(np.stack([r, g, b], -1).round().astype(np.uint8), "RGB")


def make_idefics3(out):
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(SEED)
    tokenizer = make_tokenizer()
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  image_size=48, patch_size=8, layer_norm_eps=1e-6)
    config = Idefics3Config(vision_config=vision, text_config=text_config(3, tie=False, vocab=352),
                            image_token_id=image_token_id, scale_factor=2)
    model = Idefics3ForConditionalGeneration(config).eval()
    redraw(model, torch.Generator().manual_seed(SEED))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)

    image_processor = Idefics3ImageProcessor(do_image_splitting=False, size={"longest_edge": 48},
                                             max_image_size={"longest_edge": 48})
    image_processor.save_pretrained(out)
    image = test_image(48)
    image.save(os.path.join(out, "image.png"))
    processor = Idefics3Processor(image_processor, tokenizer, image_seq_len=(48 // 8) ** 2 // 4)
    processed = processor(text=[PROMPT], images=[[image]], return_tensors="pt")
    pixels = processed["pixel_values"]
    assert tuple(pixels.shape) == (1, 1, 3, 48, 48), pixels.shape
    # Rescale + normalise of an image already at the encoder's size: check the processor did exactly that.
    manual = (torch.tensor(np.asarray(image), dtype=torch.float32).permute(2, 0, 1) / 255 - 0.5) / 0.5
    assert torch.allclose(pixels[0, 0], manual, atol=1e-6), "processor did more than rescale + normalise"

    input_ids = processed["input_ids"]
    logits, cache = run(model, input_ids=input_ids, pixel_values=pixels,
                        pixel_attention_mask=processed.get("pixel_attention_mask"))
    expected = {"logits": logits, "input_ids": input_ids[0].to(torch.int64),
                "pixel_values": pixels[0, 0].contiguous()}
    expected.update(cache_tensors(cache, config.text_config.num_hidden_layers))
    # SmolVLM2's class (`SmolVLMForConditionalGeneration`) is the same network under another name: same tensor names,
    # same outputs. The Swift tests load this directory relabelled as it.
    smol = SmolVLMForConditionalGeneration(SmolVLMConfig(**{k: v for k, v in config.to_dict().items()
                                                            if k in ("vision_config", "text_config", "image_token_id",
                                                                     "scale_factor")})).eval()
    smol.load_state_dict(model.state_dict(), strict=True)
    smol_logits, _ = run(smol, input_ids=input_ids, pixel_values=pixels,
                         pixel_attention_mask=processed.get("pixel_attention_mask"))
    assert torch.allclose(smol_logits, logits, rtol=0, atol=1e-5), "SmolVLM and Idefics3 classes differ"
    # Resampling: images of other sizes go through the processor's two Lanczos resizes (aspect, then square).
    for name, (w, h) in RESIZE_CASES.items():
        picture = test_image(w, h)
        picture.save(os.path.join(out, f"{name}.png"))
        expected[f"{name}.pixel_values"] = image_processor(images=[[picture]], return_tensors="pt")["pixel_values"][0, 0]
    # Image splitting (SmolVLM's default): a 100x70 image becomes 2x2 tiles of 48 px plus the global image, each 9
    # tokens, behind <row_i_col_j> markers. Its processor config is written next to the plain one.
    split_processor = Idefics3ImageProcessor(do_image_splitting=True, size={"longest_edge": 96},
                                             max_image_size={"longest_edge": 48})
    split_processor.to_json_file(os.path.join(out, "preprocessor_config.split.json"))
    picture = test_image(*SPLIT_IMAGE)
    picture.save(os.path.join(out, "split.png"))
    split = Idefics3Processor(split_processor, tokenizer, image_seq_len=(48 // 8) ** 2 // 4)(
        text=[PROMPT], images=[[picture]], return_tensors="pt")
    split_logits, split_cache = run(model, input_ids=split["input_ids"], pixel_values=split["pixel_values"],
                                    pixel_attention_mask=split.get("pixel_attention_mask"))
    assert bool(split["pixel_attention_mask"].all()), "tiles are not padded"
    expected["split.input_ids"] = split["input_ids"][0].to(torch.int64)
    expected["split.pixel_values"] = split["pixel_values"][0].contiguous()
    expected["split.logits"] = split_logits
    expected.update({f"split.{k}": v for k, v in cache_tensors(split_cache, config.text_config.num_hidden_layers).items()})
    for i, text in enumerate(TOKENIZER_TEXTS):
        expected[f"tokenizer.{i}"] = torch.tensor(tokenizer.encode(text, add_special_tokens=False), dtype=torch.int64)
    metadata = {"prompt": PROMPT, **{f"tokenizer.{i}": t for i, t in enumerate(TOKENIZER_TEXTS)}}
    save_file(expected, os.path.join(out, "expected.safetensors"), metadata=metadata)
    return input_ids[0].tolist()


def make_llama(out):
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(SEED + 1)
    config = LlamaConfig(**text_config(2, tie=True))
    model = LlamaForCausalLM(config).eval()
    redraw(model, torch.Generator().manual_seed(SEED + 1))
    model.save_pretrained(out, max_shard_size="100KB")
    ids = [1, 17, 33, 64, 5, 99, 127, 2, 40, 41, 42]
    input_ids = torch.tensor([ids])
    logits, cache = run(model, input_ids=input_ids)
    expected = {"logits": logits, "input_ids": input_ids[0].to(torch.int64)}
    expected.update(cache_tensors(cache, config.num_hidden_layers))
    save_file(expected, os.path.join(out, "expected.safetensors"))
    return ids


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "Tests/KVCSmolVLMTests/Fixtures"
    ids = make_idefics3(os.path.join(out, "idefics3"))
    llama_ids = make_llama(os.path.join(out, "llama"))
    info = {"transformers": transformers.__version__, "torch": torch.__version__, "seed": SEED,
            "idefics3_token_ids": ids, "llama_token_ids": llama_ids}
    with open(os.path.join(out, "versions.json"), "w") as f:
        json.dump(info, f, indent=1)
    print(json.dumps(info))


if __name__ == "__main__":
    main()
