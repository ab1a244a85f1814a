#!/usr/bin/env bash
# The whole comparison of issue 8 in one command, with the shipped front end and adapters:
#   1. every method x r = 0.6, 0.8 on one image per prompt (shape/colour questions, whose answers live in the image
#      tokens' spatial content) -> $OUT/sweep-open.jsonl
#   2. the same on multi-image prompts, K = 4 and 8 images, the question naming one -> $OUT/sweep-multi.jsonl
#   3. tokens/s under KV memory budgets, full float16 cache vs capsules, 8-image prompts, bfloat16 weight products
#      for every method -> $OUT/bench-capsule-budgets.json
#   4. one HTML page with the tables, verdicts and plots (kvc-report) -> $OUT/report.html, $OUT/report.md
# Session 7 on the 2-core machine: 52 min with the defaults after a 2 min build (a test run shared the cores for 8 min).
# Environment: QUESTIONS (default 60), MULTI_QUESTIONS (default 48), ROUNDS (default 7), BUDGETS (MB, default
# "15 18 22 25 28 30 36 42 48 56 64"), WEIGHT_PRODUCTS (bfloat16 or float32; default bfloat16 where the CPU has
# AVX-512 BF16, else float32), OUT (default runs/sweep). Each sweep file resumes where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
QUESTIONS=${QUESTIONS:-60}
MULTI_QUESTIONS=${MULTI_QUESTIONS:-48}
ROUNDS=${ROUNDS:-7}
BUDGETS=${BUDGETS:-15 18 22 25 28 30 36 42 48 56 64}
OUT=${OUT:-runs/sweep}
if [ -z "${WEIGHT_PRODUCTS:-}" ]; then
  WEIGHT_PRODUCTS=float32
  grep -q avx512_bf16 /proc/cpuinfo 2>/dev/null && WEIGHT_PRODUCTS=bfloat16
fi
swift build -c release
BIN=.build/release
mkdir -p "$OUT"
start=$(date +%s)

echo "== 1/4 every method at r = 0.6 and 0.8, one image per prompt, $QUESTIONS shape/colour questions"
$BIN/kvc-sweep --ratios 0.6,0.8 --images 1 --limit "$QUESTIONS" --answer-kind open -o "$OUT/sweep-open.jsonl" --quiet

echo "== 2/4 every method at r = 0.6 and 0.8, 4 and 8 images per prompt, $MULTI_QUESTIONS questions"
$BIN/kvc-sweep --ratios 0.6,0.8 --images 4,8 --limit "$MULTI_QUESTIONS" -o "$OUT/sweep-multi.jsonl" --quiet

echo "== 3/4 tokens/s under KV budgets of $BUDGETS MB ($ROUNDS rounds, $WEIGHT_PRODUCTS weight products)"
# shellcheck disable=SC2086
$BIN/kvc-bench capsule --modes fused --adapters checkpoints/capsule-r0.6.kvcap checkpoints/capsule-r0.8.kvcap \
  --budget-mb $BUDGETS --rounds "$ROUNDS" --decode-tokens 32 --weight-products "$WEIGHT_PRODUCTS" --json \
  > "$OUT/bench-capsule-budgets.json.partial"
mv "$OUT/bench-capsule-budgets.json.partial" "$OUT/bench-capsule-budgets.json"

echo "== 4/4 report"
$BIN/kvc-report "$OUT/sweep-open.jsonl" "$OUT/sweep-multi.jsonl" "$OUT/bench-capsule-budgets.json" \
  -o "$OUT/report.html" --svg-dir "$OUT/plots" --markdown "$OUT/report.md" > /dev/null
cat "$OUT/report.md"
echo
echo "report: $OUT/report.html ($(( ($(date +%s) - start) / 60 )) min after the build)"
