#!/usr/bin/env python3
"""Reads a kvc-collect shard with numpy only (no Swift code involved) and prints a JSON summary per sample.

Usage: read_cache_shard.py SHARD.safetensors
Uses `safetensors.numpy` when installed, else parses the format by hand (8-byte header length, JSON, raw data).
The summary holds shapes, sums and a few values so a test can compare them with what the Swift side stored.
"""
import json
import struct
import sys

import numpy as np


def load(path):
    try:
        from safetensors.numpy import load_file
        from safetensors import safe_open
        tensors = load_file(path)
        with safe_open(path, "np") as f:
            meta = f.metadata()
        return tensors, meta
    except ImportError:
        raw = open(path, "rb").read()
        n = struct.unpack("<Q", raw[:8])[0]
        header = json.loads(raw[8:8 + n])
        data = raw[8 + n:]
        dtypes = {"F16": "<f2", "F32": "<f4", "I32": "<i4", "I64": "<i8"}
        tensors = {}
        for name, v in header.items():
            if name == "__metadata__":
                continue
            s, e = v["data_offsets"]
            tensors[name] = np.frombuffer(data[s:e], dtypes[v["dtype"]]).reshape(v["shape"])
        return tensors, header.get("__metadata__", {})


def main():
    tensors, meta = load(sys.argv[1])
    header = json.loads(meta["kvc"])
    out = {"layout": header["layout"], "samples": []}
    for i, entry in enumerate(header["samples"]):
        k, v, q = tensors[f"{i}.keys"], tensors[f"{i}.values"], tensors[f"{i}.queries"]
        out["samples"].append({
            "id": entry["id"],
            "keys_shape": list(k.shape), "values_shape": list(v.shape), "queries_shape": list(q.shape),
            "keys_sum": float(k.astype(np.float64).sum()), "values_sum": float(v.astype(np.float64).sum()),
            "queries_sum": float(q.astype(np.float64).sum()),
            "key_last": float(k.reshape(-1)[-1]), "value_first": float(v.reshape(-1)[0]),
            "vision_positions": tensors[f"{i}.vision_positions"].tolist(),
            "text_positions": tensors[f"{i}.text_positions"].tolist(),
        })
    print(json.dumps(out))


if __name__ == "__main__":
    main()
