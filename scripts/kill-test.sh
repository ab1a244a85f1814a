#!/usr/bin/env bash
# Kill test for long runs (issue 9), on demand: runs COMMAND once uninterrupted, then again with SIGKILL at random
# moments and a restart after each, until it completes; then compares every output file byte for byte.
# COMMAND must write everything under WORK_DIR (the same path both times, since paths end up inside outputs).
#
#   scripts/kill-test.sh [--kills N] [--seed S] WORK_DIR COMMAND [ARGS...]
#
# Example (front end, 40 steps, checkpoint every 5; metrics.jsonl differs only in its wall-clock "seconds" field):
#   sed -e 's|runs/frontend-easyvqa|/tmp/kt/run|; s|checkpoints/frontend-easyvqa.safetensors|/tmp/kt/out.safetensors|' \
#       -e 's|steps: 600|steps: 40|; s|checkpoint_every: 10|checkpoint_every: 5|' recipes/frontend-easyvqa.yaml > /tmp/kt.yaml
#   cp runs/frontend-easyvqa/encoder-stage1.safetensors /tmp/kt-enc.safetensors   # or set encoder.checkpoint
#   scripts/kill-test.sh --kills 8 /tmp/kt .build/release/kvc-train /tmp/kt.yaml
# Collection: scripts/kill-test.sh /tmp/kc .build/release/kvc-collect --out /tmp/kc --limit 64 --samples-per-shard 8
set -u
kills=5
seed=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --kills) kills=$2; shift 2 ;;
        --seed) seed=$2; shift 2 ;;
        *) break ;;
    esac
done
[[ $# -ge 2 ]] || { sed -n '2,16p' "$0"; exit 2; }
work=$1; shift
RANDOM=$seed
rm -rf "$work" "$work.reference"

start=$(date +%s.%N)
"$@" > /dev/null 2> "$work.reference.log" || { echo "uninterrupted run failed (see $work.reference.log)"; exit 1; }
clean=$(echo "$(date +%s.%N) - $start" | bc)
mv "$work" "$work.reference"
echo "uninterrupted: ${clean}s"

landed=0
for ((k = 0; k < kills; k++)); do
    # Uniform in 5-100% of the uninterrupted time / kills, so the kills spread over the whole run.
    delay=$(echo "scale=3; $clean * (5 + 95 * $RANDOM / 32767) / 100 / $kills" | bc)
    "$@" > /dev/null 2>> "$work.kill.log" &
    pid=$!
    sleep "$delay"
    if kill -0 "$pid" 2> /dev/null; then
        kill -KILL "$pid"; wait "$pid" 2> /dev/null
        landed=$((landed + 1)); echo "kill $landed after ${delay}s"
    else
        wait "$pid" || { echo "a restarted run failed (see $work.kill.log)"; exit 1; }
    fi
done
"$@" > /dev/null 2>> "$work.kill.log" || { echo "final run failed (see $work.kill.log)"; exit 1; }

status=0
while IFS= read -r -d '' f; do
    rel=${f#"$work.reference/"}
    if [[ "$rel" == *metrics.jsonl ]]; then
        # Wall-clock fields differ by nature; everything else must match.
        strip() { sed -E 's/"seconds":[^,}]*,?//; s/"trainSeconds":[^,}]*,?//; s/"imagesPerSecond":[^,}]*,?//' "$1"; }
        cmp -s <(strip "$f") <(strip "$work/$rel") || { echo "DIFFERS: $rel"; status=1; }
    else
        cmp -s "$f" "$work/$rel" || { echo "DIFFERS: $rel"; status=1; }
    fi
done < <(find "$work.reference" -type f -print0)
leftovers=$(find "$work" -name '.*.tmp-*' | wc -l)
[[ $leftovers -eq 0 ]] || { echo "$leftovers temporary files left"; status=1; }
[[ $status -eq 0 ]] && echo "identical: $(find "$work.reference" -type f | wc -l) files after $landed kills" || echo "NOT identical after $landed kills"
exit $status
