#!/usr/bin/env bash
# Step 2 of the evidence run: the base model's own answers (T=1, P=1) to TRAIN-split problems of the
# training tasks, verified, correct ones kept (self-generated data, as in the paper). Resumable.
#   benchmarks/evidence/sample_training_data.sh [WORK]   (default: /work/evidence-work)
set -euo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/evidence/tasks.sh
WORK=${1:-/work/evidence-work}
args=()
for name in "${TRAIN_TASKS[@]}"; do args+=(--task "${TASK[$name]}"); done
.venv/bin/autodeco sample-data --model gemma-3-270m --dtype float32 "${args[@]}" --problems 1000 --samples 4 \
  --max-new-tokens "$MAX_NEW_TOKENS" --work "$WORK/samples" --out "$WORK/data.jsonl"
