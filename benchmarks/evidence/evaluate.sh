#!/usr/bin/env bash
# Step 4 of the evidence run: every task's TEST split (first 500 problems, 8 samples each) under
# greedy, default, the test-tuned oracle (an upper bound), the dev-tuned oracle (a baseline a user
# can reach), mean (MeanShift) and autodeco, compared with autodeco problem by problem. Resumable;
# samples that do not use the heads are shared by every heads (rerun with other HEADS reuses them).
#   HEADS=gemma-3-270m benchmarks/evidence/evaluate.sh [TASK ...]   (default: all tasks)
set -euo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/evidence/tasks.sh
HEADS=${HEADS:-gemma-3-270m}
OUT=${OUT:-benchmarks/results/evidence-gemma-3-270m/test}
names=("$@")
[ ${#names[@]} -gt 0 ] || names=("${ALL_TASKS[@]}")
for name in "${names[@]}"; do
  .venv/bin/autodeco eval --model gemma-3-270m --dtype float32 --heads "$HEADS" --task "${TASK[$name]}" \
    --strategies greedy,default,oracle,oracle-dev,mean,autodeco --baseline autodeco \
    --oracle-temperatures 0.2,0.4,0.6,0.8,1.0 --oracle-top-ps 0.8,0.9,0.95,1.0 --oracle-dev-limit 200 \
    --samples 8 --limit 500 --max-new-tokens "$MAX_NEW_TOKENS" --out "$OUT/$name"
done
