#!/usr/bin/env bash
# The main job on the default model and data, end to end (about 10-15 minutes on 2 cores after the build):
#   set up -> collect KV caches of the frozen VLM on easy-VQA train -> fit a KVCapsule adapter (r = 0.6)
#   -> export it (.kvcap) -> evaluate easy-VQA test with the full float16 cache and with the capsule cache -> table
#   -> the capsule next to two baselines at the same bytes (kvc-sweep) -> an HTML report (kvc-report).
# The VLM is SmolLM2-135M (frozen) + the shipped vision front end (checkpoints/frontend-easyvqa-instruct.safetensors,
# whose image tokens read the question).
# Environment: TRAIN_SAMPLES (default 200), TEST_QUESTIONS (default 200), RATIO (0.4, 0.6 or 0.8; default 0.6),
# SWEEP_QUESTIONS (default 100; 0 skips the baseline comparison).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
TRAIN_SAMPLES=${TRAIN_SAMPLES:-200}
TEST_QUESTIONS=${TEST_QUESTIONS:-200}
RATIO=${RATIO:-0.6}
SWEEP_QUESTIONS=${SWEEP_QUESTIONS:-100}
FRONT_END=checkpoints/frontend-easyvqa-instruct.safetensors
OUT=runs/main
swift build -c release
BIN=.build/release
mkdir -p "$OUT"

echo "== 1/5 collect $TRAIN_SAMPLES training prompts' vision KV caches"
$BIN/kvc-collect --split train --out "$OUT/caches" --front-end "$FRONT_END" --limit "$TRAIN_SAMPLES"

echo "== 2/5 fit the capsule adapter (r = $RATIO)"
sed -e "s#^caches: .*#caches: $OUT/caches#" -e "s#^run_dir: .*#run_dir: $OUT/capsule-r$RATIO#" \
  "recipes/capsule-r$RATIO.yaml" > "$OUT/capsule-r$RATIO.yaml"
$BIN/kvc-train "$OUT/capsule-r$RATIO.yaml"

echo "== 3/5 export"
$BIN/kvc-export "$OUT/capsule-r$RATIO" -o "$OUT/capsule-r$RATIO.kvcap"

echo "== 4/5 evaluate $TEST_QUESTIONS easy-VQA test questions: full cache vs capsule"
$BIN/kvc-eval --split test --limit "$TEST_QUESTIONS" --front-end "$FRONT_END" --json --quiet > "$OUT/eval-full.json"
$BIN/kvc-eval --split test --limit "$TEST_QUESTIONS" --front-end "$FRONT_END" --json --quiet \
  --adapter "$OUT/capsule-r$RATIO.kvcap" > "$OUT/eval-capsule.json"

python3 - "$OUT/eval-full.json" "$OUT/eval-capsule.json" <<'PY'
import json, sys
rows = [json.load(open(p)) for p in sys.argv[1:]]
print()
print("| cache | ratio | accuracy | vision KV bytes / prompt | whole KV bytes / prompt | questions/s |")
print("|---|---|---|---|---|---|")
for r in rows:
    vision = r.get("kv_bytes_vision")
    vfull = r.get("kv_bytes_vision_full")
    vcol = f"{vision:,} ({vfull / vision:.2f}x smaller)" if vision else "full float16"
    print(f"| {r['cache']} | {r.get('ratio', 0)} | {r['accuracy']:.4f} (n={r['n']}) | {vcol} | "
          f"{r['kv_bytes']:,} of {r['kv_bytes_full']:,} | {r['questions_per_second']:.2f} |")
PY

if [ "$SWEEP_QUESTIONS" -gt 0 ]; then
  # Shape/colour questions only: their answers live in the image tokens' spatial content, where eviction bites;
  # the yes/no answer is one offset shared by all of an image's tokens, which any kept token still carries.
  echo "== 5/5 the capsule next to SnapKV eviction and key+value PCA at the same bytes ($SWEEP_QUESTIONS shape/colour questions), report"
  rm -f "$OUT/sweep.jsonl"
  $BIN/kvc-sweep --methods full,capsule,snapkv,pca --ratios "$RATIO" --images 1 --limit "$SWEEP_QUESTIONS" \
    --answer-kind open --front-end "$FRONT_END" --adapters "$OUT/capsule-r{ratio}.kvcap" -o "$OUT/sweep.jsonl" --quiet
  $BIN/kvc-report "$OUT/sweep.jsonl" -o "$OUT/report.html" --markdown "$OUT/report.md" > /dev/null
  echo; cat "$OUT/report.md"; echo; echo "report: $OUT/report.html"
fi
