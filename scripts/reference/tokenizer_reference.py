#!/usr/bin/env python3
"""Independent reference token ids for the SmolLM2 tokenizer, built with Hugging Face `tokenizers`.

The vocabulary and merges come straight from the GGUF file (read with the `gguf` package), and the
pre-tokenizer is configured the way the file's `tokenizer.ggml.pre = "smollm"` asks for: every digit
isolated, then the GPT-2 byte-level split. (Hugging Face `transformers`' own GGUF conversion drops the
digit split, so it is not used here.)

    pip install gguf tokenizers
    python3 scripts/reference/tokenizer_reference.py [--gguf PATH] [--out FIXTURE.json]
        [--llama-fixture Tests/KVCTokenizerTests/Fixtures/smollm2-tokenizer-llamacpp.json]
        [--dump-vocab /tmp/smollm2-vocab.json]

Writes the fixture (strings and ids, no BOS, special tokens parsed) and, when given the llama.cpp
fixture, checks that this reference agrees with every llama.cpp case (exit status 1 if not).
"""
import argparse
import json
import random
import sys

import gguf
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4

CASES = [
    # ASCII prose and whitespace
    "Hello world", "Hello, world! How are you today?", "The quick brown fox jumps over the lazy dog.",
    "a", " ", "  ", "\n", "\n\n\n", "\t\t", " \t \n ", "word  ", "  word", "a  b   c    d",
    "Two spaces  then\ttab\tthen\r\nCRLF", "trailing newline\n", "\n\nleading newlines", "x \n y",
    "sentence.  Another sentence.   Third.", "end with spaces   ", "tab\tbefore\t\tletters",
    # contractions, case, punctuation
    "I'm sure they'll say we've done what we'd planned; it's John's.", "DON'T SHOUT", "'s 't 're 've 'm 'll 'd",
    "rock'n'roll", "quote \"inside\" and 'single'", "...!!!???", "a--b__c", "(parenthesis) [brackets] {braces}",
    # numbers
    "0", "42", "3.14159265358979", "1,234,567.89", "-17 +23 ×4 ÷2", "v1.2.3-beta.4", "2026-11-25T12:56:40Z",
    "phone: +1 (555) 010-9999", "½ ⅓ ¼ ² ³ Ⅻ ٣ ४", "100%", "  12  34  ", "a1b2c3", "x 1", "x  1", "x\n1",
    # code
    "for (int i = 0; i < n; ++i) { sum += a[i]; }", "def main():\n\tprint('hi')\n\n\nif __name__ == '__main__':\n    main()\n",
    "let x: [Int] = [1, 2, 3].map { $0 * 2 }", "#include <stdio.h>\nint main(void) { return 0; }",
    "SELECT * FROM t WHERE a >= 10 AND b <> 'x';", "<div class=\"a\">&nbsp;</div>", "λx.x → f(x) ≠ g(x)",
    "snake_case camelCase PascalCase kebab-case", "    indented by four\n        and eight",
    # accents and other scripts
    "Café crème brûlée à la façon de Noël", "naïve coöperate résumé", "Ångström Øre Æsir", "Zürich Größe Straße",
    "Ελληνικά κείμενο", "Русский текст, ёлка", "עברית", "العربية", "हिन्दी पाठ", "ไทย", "Tiếng Việt có dấu",
    "日本語のテキストです。", "中文分词测试，标点符号！", "한국어 문장입니다", "混合 mixed テキスト 123",
    # emoji
    "😀", "👍🏽", "🇫🇷🇯🇵", "👨‍👩‍👧‍👦 family", "emoji 🎉🎉 party", "❤️ ✔︎ ☺",
    # special tokens and chat markup
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n",
    "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n", "text<|endoftext|>more", "<|im_end|><|im_end|>",
    "<|im_start|", "< |im_start| >", "<file_sep>a<filename>b", "a<|im_start|>b",
    # odd unicode: non-breaking and exotic spaces, combining marks, zero-width, controls
    "no\u00a0break", "em\u2003space", "ideographic\u3000space", "e\u0301 combining", "zero\u200bwidth",
    "line\u2028separator", "control\u0007bell", "\u0085next line", "tab\u000bvertical",
    # long runs
    "a" * 100, " " * 50 + "x", "ab" * 40, "\n" * 30, "9" * 30, "=" * 64,
]


def read_gguf_vocab(path):
    reader = gguf.GGUFReader(path)
    fields = reader.fields
    tokens = list(fields["tokenizer.ggml.tokens"].contents())
    merges = list(fields["tokenizer.ggml.merges"].contents())
    types = [int(t) for t in fields["tokenizer.ggml.token_type"].contents()]
    pre = fields["tokenizer.ggml.pre"].contents()
    return tokens, merges, types, pre


def build_tokenizer(tokens, merges, types, pre):
    if pre != "smollm":
        raise SystemExit(f"expected tokenizer.ggml.pre 'smollm', found {pre!r}")
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise SystemExit("duplicate token strings in the vocabulary")
    pairs = [tuple(m.split(" ")) for m in merges]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    specials = [AddedToken(tokens[i], special=True, normalized=False)
                for i, t in enumerate(types) if t in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED)]
    tokenizer.add_special_tokens(specials)
    return tokenizer


def random_strings(count, seed):
    """Seeded random mixtures, so the fixture also covers combinations nobody thought of."""
    rng = random.Random(seed)
    pools = ["abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789", " \t\n", "  ",
             ".,;:!?'\"()[]{}<>-_=+*/\\|&^%$#@~`", "éèêëàâäôöûüçñßÉÅØæœ", "日本語中文한국어テキスト",
             "😀👍🏽🎉❤️🇫🇷", "'s", "'ll", " the", "\u00a0\u3000"]
    out = []
    for _ in range(count):
        parts = [rng.choice(pools) for _ in range(rng.randint(1, 6))]
        out.append("".join(rng.choice(p) if len(p) > 3 and rng.random() < 0.8 else p
                           for p in parts for _ in range(rng.randint(1, 5))))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default="assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--out", default="Tests/KVCTokenizerTests/Fixtures/smollm2-tokenizer-hf.json")
    ap.add_argument("--llama-fixture", default="Tests/KVCTokenizerTests/Fixtures/smollm2-tokenizer-llamacpp.json")
    ap.add_argument("--long-text", default="/usr/share/common-licenses/GPL-3",
                    help="its first 20,000 characters (the perplexity text) go to a second fixture")
    ap.add_argument("--long-out", default="Tests/KVCTokenizerTests/Fixtures/smollm2-tokenizer-hf-gpl3.json")
    ap.add_argument("--dump-vocab", default=None, help="also write tokens/merges/types as JSON (for development)")
    args = ap.parse_args()

    tokens, merges, types, pre = read_gguf_vocab(args.gguf)
    if args.dump_vocab:
        with open(args.dump_vocab, "w") as f:
            json.dump({"tokens": tokens, "merges": merges, "token_type": types, "pre": pre}, f)

    tokenizer = build_tokenizer(tokens, merges, types, pre)

    def encode(text):
        return tokenizer.encode(text, add_special_tokens=False).ids

    ok = True
    try:
        with open(args.llama_fixture) as f:
            llama = json.load(f)
        for case in llama["cases"]:
            ids = encode(case["text"])
            if ids != case["ids"]:
                ok = False
                print(f"DIFFERS from llama.cpp: {case['text']!r}\n  hf:    {ids}\n  llama: {case['ids']}")
        print(f"compared {len(llama['cases'])} llama.cpp cases: {'all equal' if ok else 'DIFFERENCES'}")
    except FileNotFoundError:
        print(f"note: {args.llama_fixture} not found, skipped the llama.cpp comparison")

    cases = [{"text": t, "ids": encode(t)} for t in CASES + random_strings(60, seed=20261125)]
    for case in cases:
        if tokenizer.decode(case["ids"], skip_special_tokens=False) != case["text"]:
            print(f"note: HF decode does not round-trip {case['text']!r}")
    fixture = {
        "source": ("Hugging Face tokenizers " + __import__("tokenizers").__version__
                   + " BPE over the vocabulary and merges of " + args.gguf.split("/")[-1]
                   + ", pre-tokenizer Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False,"
                   " use_regex=True)], control tokens added as special tokens, no BOS;"
                   " made by scripts/reference/tokenizer_reference.py"),
        "cases": cases,
    }
    with open(args.out, "w") as f:
        json.dump(fixture, f, ensure_ascii=False, indent=0)
        f.write("\n")
    print(f"wrote {len(cases)} cases to {args.out}")

    with open(args.long_text, encoding="utf-8") as f:
        long_text = f.read()[:20000]
    long_ids = encode(long_text)
    with open(args.long_out, "w") as f:
        json.dump({"source": fixture["source"] + f"; text: the first 20,000 characters of {args.long_text}",
                   "cases": [{"text": long_text, "ids": long_ids}]}, f, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {len(long_ids)} ids for the first 20,000 characters of {args.long_text} to {args.long_out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
