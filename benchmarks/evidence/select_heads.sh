#!/usr/bin/env bash
# Step 3b: each trained variant (and the shipped heads) on the DEV split of the training tasks
# (first 200 problems, 4 samples): autodeco against default and mean, problem by problem. The
# variant with the best mean autodeco pass@1 over these tasks is the one evaluated on test; the
# held-out tasks and the test split play no part in the choice. Resumable.
#   benchmarks/evidence/select_heads.sh [WORK]
set -euo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/evidence/tasks.sh
WORK=${1:-/work/evidence-work}
OUT=${OUT:-benchmarks/results/evidence-gemma-3-270m/dev}
for heads in gemma-3-270m "$WORK"/heads-*; do
  for name in "${TRAIN_TASKS[@]}"; do
    .venv/bin/autodeco eval --model gemma-3-270m --dtype float32 --heads "$heads" --task "${TASK[$name]},split=dev" \
      --strategies greedy,default,mean,autodeco --samples 4 --limit 200 --max-new-tokens "$MAX_NEW_TOKENS" \
      --out "$OUT/$name" > /dev/null
    cp "$OUT/$name/results.json" "$OUT/$name/results-$(basename "$heads").json"
  done
done
