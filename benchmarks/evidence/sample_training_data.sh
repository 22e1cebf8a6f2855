#!/usr/bin/env bash
# Step 2 of the evidence run: the base model's own answers (T=1, P=1; 4 per problem) to TRAIN-split
# problems of the training tasks, verified, correct ones kept (self-generated data, as in the
# paper). Resumable: the samples of all tasks live in one folder.
#   benchmarks/evidence/sample_training_data.sh [WORK]   (default: /work/evidence-work)
set -euo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/evidence/tasks.sh
WORK=${1:-/work/evidence-work}
# chain_worked answers are ten times longer (26 tokens), so fewer of its problems are sampled
declare -A PROBLEMS=([arithmetic]=1000 [letters]=1000 [chain_worked]=400)
for name in "${TRAIN_TASKS[@]}"; do
  .venv/bin/autodeco sample-data --model gemma-3-270m --dtype float32 --task "${TASK[$name]}" --problems "${PROBLEMS[$name]}" \
    --samples 4 --max-new-tokens "$MAX_NEW_TOKENS" --work "$WORK/samples" --out "$WORK/data-$name.jsonl"
done
cat $(printf "$WORK/data-%s.jsonl " "${TRAIN_TASKS[@]}") > "$WORK/data.jsonl.tmp" && mv "$WORK/data.jsonl.tmp" "$WORK/data.jsonl"
