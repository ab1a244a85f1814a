#!/usr/bin/env python3
"""Independent reference for the Swift GGUF reader (KVCGGUF), built on the `gguf` Python package.

Writes into Tests/KVCGGUFTests/Fixtures/:
  smollm2_reference.json  - metadata and, for a few tensors of each type in the real SmolLM2 file, their layout
                            (type, ggml dims, absolute offset, byte count) and dequantized values at fixed flat
                            indices plus float64 sums, all computed by gguf.GGUFReader + gguf.quants.dequantize.
  synthetic_types.gguf    - a small file written by gguf.GGUFWriter with tensors of every type the reader
                            dequantizes (F32, F16, BF16, Q8_0, Q4_0, Q4_1; quantized by gguf.quants from seeded
                            random data) and metadata of every value type.
  synthetic_types.json    - the full dequantized values of those tensors and the metadata, as gguf reads them.

Usage: pip install gguf numpy; python3 scripts/reference/gguf_dump_reference.py [path/to/SmolLM2-135M-Instruct.Q4_1.gguf]
"""
import json
import os
import sys

import numpy as np
import gguf
from gguf.quants import dequantize, quantize

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "Tests", "KVCGGUFTests", "Fixtures")
MODEL = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.environ.get("KVC_ASSETS", os.path.join(ROOT, "assets")), "smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")

T = gguf.GGMLQuantizationType


def field_value(f):
    """Decode a ReaderField into plain JSON values."""
    vt = f.types[0]
    if vt == gguf.GGUFValueType.ARRAY:
        if f.types[1] == gguf.GGUFValueType.STRING:
            return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
        return [f.parts[i].tolist()[0] for i in f.data]
    if vt == gguf.GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8")
    v = f.parts[f.data[0]].tolist()[0]
    return bool(v) if vt == gguf.GGUFValueType.BOOL else v


def sample_indices(n, rng):
    fixed = [0, 1, 2, 15, 16, 17, 31, 32, 33, 575, 576, n // 2, n - 33, n - 32, n - 1]
    rand = rng.integers(0, n, size=16).tolist()
    return sorted({i for i in fixed + rand if 0 <= i < n})


def tensor_summary(t, rng):
    values = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
    assert values.size == int(t.n_elements)
    idx = sample_indices(values.size, rng)
    return {
        "name": t.name,
        "type": t.tensor_type.name,
        "type_id": int(t.tensor_type),
        "dims": [int(d) for d in t.shape],          # gguf-py lists ggml order (ne0 first)
        "offset": int(t.data_offset),
        "byte_count": int(t.n_bytes),
        "element_count": int(t.n_elements),
        "sum": float(values.astype(np.float64).sum()),
        "abs_sum": float(np.abs(values.astype(np.float64)).sum()),
        "indices": idx,
        "values": [float(values[i]) for i in idx],
    }


def real_file():
    r = gguf.GGUFReader(MODEL)
    rng = np.random.default_rng(1234)
    by_name = {t.name: t for t in r.tensors}
    picks = ["token_embd.weight", "output_norm.weight", "blk.0.attn_norm.weight", "blk.0.ffn_norm.weight",
             "blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.ffn_down.weight", "blk.17.ffn_gate.weight",
             "blk.29.attn_v.weight", "blk.29.attn_output.weight"]
    type_counts = {}
    for t in r.tensors:
        type_counts[t.tensor_type.name] = type_counts.get(t.tensor_type.name, 0) + 1
    scalar_keys = ["general.architecture", "llama.block_count", "llama.context_length", "llama.embedding_length",
                   "llama.feed_forward_length", "llama.attention.head_count", "llama.attention.head_count_kv",
                   "llama.rope.freq_base", "llama.attention.layer_norm_rms_epsilon", "llama.vocab_size",
                   "llama.rope.dimension_count", "tokenizer.ggml.model", "tokenizer.ggml.pre",
                   "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.add_bos_token",
                   "general.alignment"]
    meta = {k: field_value(r.fields[k]) for k in scalar_keys if k in r.fields}
    tokens = field_value(r.fields["tokenizer.ggml.tokens"])
    merges = field_value(r.fields["tokenizer.ggml.merges"])
    token_type = field_value(r.fields["tokenizer.ggml.token_type"])
    keys = [k for k in r.fields if not k.startswith("GGUF.")]
    return {
        "file_size": os.path.getsize(MODEL),
        "version": field_value(r.fields["GGUF.version"]),
        "tensor_count": len(r.tensors),
        "metadata_count": len(keys),
        "metadata_keys": keys,
        "tensor_type_counts": type_counts,
        "first_tensor_names": [t.name for t in r.tensors[:12]],
        "data_offset": int(r.data_offset),
        "metadata": meta,
        "tokens_count": len(tokens),
        "tokens_sample": {str(i): tokens[i] for i in [0, 1, 2, 3, 100, 1000, 49151]},
        "merges_count": len(merges),
        "merges_sample": {str(i): merges[i] for i in [0, 1, 1000, len(merges) - 1]},
        "token_type_sample": {str(i): token_type[i] for i in [0, 1, 2, 100, 49151]},
        "chat_template_length": len(field_value(r.fields["tokenizer.chat_template"]).encode("utf-8")),
        "tensors": [tensor_summary(by_name[n], rng) for n in picks],
    }


def synthetic():
    rng = np.random.default_rng(42)
    path = os.path.join(OUT, "synthetic_types.gguf")
    w = gguf.GGUFWriter(path, arch="test")
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -100)
    w.add_uint16("test.u16", 60000)
    w.add_int16("test.i16", -30000)
    w.add_uint32("test.u32", 4_000_000_000)
    w.add_int32("test.i32", -2_000_000_000)
    w.add_uint64("test.u64", 2 ** 63 + 5)
    w.add_int64("test.i64", -(2 ** 62))
    w.add_float32("test.f32", 0.1)
    w.add_float64("test.f64", -1.0e300)
    w.add_bool("test.bool", True)
    w.add_string("test.string", "héllo 世界 🙂")
    w.add_array("test.strings", ["a", "", "ÿ", "<|im_end|>"])
    w.add_array("test.ints", [1, -2, 3])
    w.add_array("test.floats", [0.5, -1.25])
    tensors = {}
    # Rows of 64 elements so every block format splits rows evenly; last row offset by a constant to test minima.
    base = (rng.standard_normal((3, 64)) * 2.0).astype(np.float32)
    base[2] += 5.0
    for qtype in [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1]:
        name = f"t.{qtype.name.lower()}"
        if qtype == T.F32:
            w.add_tensor(name, base)
        elif qtype == T.F16:
            w.add_tensor(name, base.astype(np.float16))
        else:
            q = quantize(base, qtype)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=qtype)
        tensors[name] = qtype
    w.add_tensor("t.vector", np.arange(32, dtype=np.float32) * 0.25)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    r = gguf.GGUFReader(path)
    out = {"tensors": [], "metadata": {k: field_value(f) for k, f in r.fields.items() if not k.startswith("GGUF.")}}
    out["metadata"]["test.u64"] = str(out["metadata"]["test.u64"])   # beyond JSON-safe integers
    for t in r.tensors:
        values = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
        out["tensors"].append({"name": t.name, "type": t.tensor_type.name, "dims": [int(d) for d in t.shape],
                               "offset": int(t.data_offset), "byte_count": int(t.n_bytes),
                               "values": [float(v) for v in values]})
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "smollm2_reference.json"), "w") as f:
        json.dump(real_file(), f, indent=1, ensure_ascii=False)
    with open(os.path.join(OUT, "synthetic_types.json"), "w") as f:
        json.dump(synthetic(), f, indent=1, ensure_ascii=False)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
