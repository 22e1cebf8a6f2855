#!/bin/sh
# Reproduce the shipped Gemma-3-270M heads from nothing: self-generated data, training, evaluation.
# Every step is resumable: run the script again after an interruption and it goes on.
#   sh recipes/gemma-3-270m.sh [WORK_DIR]      (needs: pip install 'autodeco[gemma,eval]')
set -eu
WORK=${1:-recipe-work/gemma-3-270m}
mkdir -p "$WORK"
# glibc: reuse freed vocabulary-sized buffers instead of re-mapping them (see benchmarks/decode_overhead.py)
export MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=17179869184

ARITHMETIC="reasoning_gym:basic_arithmetic,min_terms=2,max_terms=2,min_digits=1,max_digits=1"
LETTERS="reasoning_gym:letter_counting"
HELD_OUT="reasoning_gym:chain_sum,min_terms=2,max_terms=2,min_digits=1,max_digits=1"

# 1. The base model's own answers (T=1, P=1) to training-split problems, verified, correct ones kept.
autodeco sample-data --model gemma-3-270m --task "$ARITHMETIC,size=6000" --problems 1000 --samples 6 \
  --max-new-tokens 16 --batch-size 16 --work "$WORK/samples" --out "$WORK/arithmetic.jsonl"
autodeco sample-data --model gemma-3-270m --task "$LETTERS,size=3000" --problems 400 --samples 6 \
  --max-new-tokens 16 --batch-size 16 --work "$WORK/samples" --out "$WORK/letters.jsonl"
cat "$WORK/arithmetic.jsonl" "$WORK/letters.jsonl" > "$WORK/data.jsonl"

# 2. Train the heads on the frozen base (both losses, DFT weights; no easy-token masking, which won here).
autodeco train --base gemma-3-270m --data "$WORK/data.jsonl" --out "$WORK/heads" \
  --epochs 4 --lr 5e-4 --batch-size 16 --max-length 256 --cache-features --checkpoint-every 100 --seed 0 --easy-token-drop 0 \
  $( [ -d "$WORK/heads/checkpoints" ] && echo --resume )

# 3. Held-out problems of a training task and a task not trained on, against every baseline.
autodeco eval --model gemma-3-270m --heads "$WORK/heads" --task "$ARITHMETIC" --task "$HELD_OUT" \
  --strategies greedy,default,oracle,mean,autodeco --oracle-temperatures 0.2,0.4,0.6,0.8,1.0 --oracle-top-ps 0.8,0.9,1.0 \
  --samples 4 --limit 200 --batch-size 16 --max-new-tokens 16 --out "$WORK/eval"
