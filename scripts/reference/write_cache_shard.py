#!/usr/bin/env python3
"""Writes a kvc-collect cache shard from numpy arrays, so caches dumped by another framework (for example a PyTorch
VLM) can be trained on by the Swift side. The layout is the one README.md ("Cache shards") describes.

Library use:
    write_shard(path, samples, fingerprint="my-vlm", layout=dict(layers=30, kv_heads=3, query_heads=9, head_dim=64))
with each sample a dict: id, keys and values (float16 [layers, kv_heads, N, head_dim], post-RoPE keys),
queries (float16 [layers, query_heads, T, head_dim], post-RoPE), vision_positions (int32 [N]),
text_positions (int32 [T]), grids (list of {start, rows, cols}, start = index in the vision span), info (str -> str).
Then run `kvc-collect`'s manifest rebuild (any kvc-collect run on the directory) or write manifest.json yourself.

Demo: write_cache_shard.py OUT.safetensors --demo SEED   writes two random samples and prints their sums as JSON.
"""
import json
import struct
import sys

import numpy as np

LAYOUT_VERSION = 1


def write_shard(path, samples, fingerprint, layout, shard_index=0, skipped=()):
    tensors = {}
    entries = []
    for i, s in enumerate(samples):
        n, t = len(s["vision_positions"]), len(s["text_positions"])
        kv_shape = (layout["layers"], layout["kv_heads"], n, layout["head_dim"])
        q_shape = (layout["layers"], layout["query_heads"], t, layout["head_dim"])
        for name, shape in (("keys", kv_shape), ("values", kv_shape), ("queries", q_shape)):
            a = np.ascontiguousarray(s[name], dtype=np.float16)
            if a.shape != shape:
                raise ValueError(f"sample {s['id']}: {name} has shape {a.shape}, expected {shape}")
            tensors[f"{i}.{name}"] = a
        tensors[f"{i}.vision_positions"] = np.ascontiguousarray(s["vision_positions"], dtype=np.int32)
        tensors[f"{i}.text_positions"] = np.ascontiguousarray(s["text_positions"], dtype=np.int32)
        entries.append({"id": s["id"], "grids": list(s["grids"]), "info": dict(s.get("info", {}))})
    header = {"layout_version": LAYOUT_VERSION, "fingerprint": fingerprint, "layout": layout,
              "shard_index": shard_index, "samples": entries,
              "skipped": [{"id": i, "reason": r} for i, r in skipped]}
    metadata = {"kvc": json.dumps(header, sort_keys=True)}
    tmp = path + ".tmp"   # complete file or none: kvc-collect treats every shard-*.safetensors as finished
    try:
        from safetensors.numpy import save_file
        save_file(tensors, tmp, metadata=metadata)
    except ImportError:
        _save_by_hand(tensors, tmp, metadata)
    import os
    os.replace(tmp, path)


def _save_by_hand(tensors, path, metadata):
    dtypes = {np.dtype("float16"): "F16", np.dtype("int32"): "I32"}
    head, blobs, offset = {"__metadata__": metadata}, [], 0
    for name, a in tensors.items():
        raw = a.astype(a.dtype.newbyteorder("<")).tobytes()
        head[name] = {"dtype": dtypes[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(head).encode()
    text += b" " * ((8 - (8 + len(text)) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def _demo(path, seed):
    rng = np.random.default_rng(seed)
    layout = {"layers": 2, "kv_heads": 3, "query_heads": 9, "head_dim": 4}
    samples, summary = [], []
    for i, (rows, cols, t) in enumerate([(2, 2, 3), (2, 3, 1)]):
        n = rows * cols
        s = {"id": f"demo/{i}", "grids": [{"start": 0, "rows": rows, "cols": cols}], "info": {"source": "python"},
             "vision_positions": np.arange(5, 5 + n), "text_positions": np.arange(7 + n, 7 + n + t),
             "keys": rng.standard_normal((2, 3, n, 4)), "values": rng.standard_normal((2, 3, n, 4)),
             "queries": rng.standard_normal((2, 9, t, 4))}
        samples.append(s)
        summary.append({k: float(np.asarray(s[k], dtype=np.float16).astype(np.float64).sum())
                        for k in ("keys", "values", "queries")})
    write_shard(path, samples, fingerprint="python-demo", layout=layout, skipped=[("demo/9", "left out on purpose")])
    print(json.dumps(summary))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[2] == "--demo":
        _demo(sys.argv[1], int(sys.argv[3]))
    else:
        sys.exit(__doc__)
