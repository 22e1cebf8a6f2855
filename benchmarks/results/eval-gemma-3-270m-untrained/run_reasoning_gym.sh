#!/bin/sh
# The untrained heads: autodeco init --base gemma-3-270m --out /root/evals/gemma-untrained-heads --seed 0
# The issue-4 evidence run: Gemma-3-270M, untrained heads (only `mean` reads them).
cd /work/main
export MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=17179869184
.venv/bin/autodeco eval --model gemma-3-270m --heads /root/evals/gemma-untrained-heads \
  --task "reasoning_gym:basic_arithmetic,min_terms=2,max_terms=2,min_digits=1,max_digits=1" \
  --task "reasoning_gym:chain_sum,min_terms=2,max_terms=2,min_digits=1,max_digits=1" \
  --strategies "greedy,default,static:0.3,1,static:0.6,1,static:0.6,0.9,mean" --samples 4 --limit 200 --batch-size 16 --max-new-tokens 16 \
  --out /root/evals/gemma-untrained-reasoning-gym
