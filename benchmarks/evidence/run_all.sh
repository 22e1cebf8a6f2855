#!/usr/bin/env bash
# The whole evidence run, step by step; every step resumes where it stopped, so rerun it after an
# interruption. Wall time on 2 CPU cores: see benchmarks/results/evidence-gemma-3-270m/README.md.
#   benchmarks/evidence/run_all.sh [WORK] [HEADS]   (HEADS: the variant select_heads.sh chose)
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${1:-/work/evidence-work}
benchmarks/evidence/sample_training_data.sh "$WORK"
benchmarks/evidence/train_heads.sh "$WORK"
benchmarks/evidence/select_heads.sh "$WORK"
if [ -n "${2:-}" ]; then
  HEADS=$2 benchmarks/evidence/evaluate.sh
  .venv/bin/python benchmarks/evidence/open_ended.py --heads "$2"
fi
