#!/usr/bin/env bash
# Step 3 of the evidence run: heads trained on the self-generated data of the training tasks, in
# variants; select_heads.sh picks one on the dev split. Resumable (each variant checkpoints).
#   benchmarks/evidence/train_heads.sh [WORK]   (default: /work/evidence-work)
set -euo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/evidence/tasks.sh
WORK=${1:-/work/evidence-work}
# the shipped recipe (both losses, DFT, no easy-token masking); the same with the top-p head's lr
# x0.1 (its sigmoid saturates at P == 1 otherwise, see top-p-saturation/README.md); and the latter
# with the paper's easy-token masking
declare -A VARIANTS=(
  [paper-lr]=""
  [top-p-lr-0.1]="--top-p-lr-scale 0.1"
  [top-p-lr-0.1-masking]="--top-p-lr-scale 0.1 --easy-token-drop 0.6"
)
for variant in paper-lr top-p-lr-0.1 top-p-lr-0.1-masking; do
  out="$WORK/heads-$variant"
  resume=$([ -d "$out/checkpoints" ] && echo --resume || true)
  # shellcheck disable=SC2086
  .venv/bin/autodeco train --base gemma-3-270m --dtype float32 --data "$WORK/data.jsonl" --out "$out" \
    --epochs 4 --lr 5e-4 --batch-size 16 --max-length 256 --cache-features --checkpoint-every 100 --seed 0 \
    --easy-token-drop 0 ${VARIANTS[$variant]} $resume
done
