#!/bin/sh
# The untrained heads: autodeco init --base gemma-3-270m --out /root/evals/gemma-untrained-heads --seed 0
# The issue-4 evidence run, mmath part (the reasoning_gym part is in run_reasoning_gym.sh).
cd /work/main
export MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=17179869184
.venv/bin/autodeco eval --model gemma-3-270m --heads /root/evals/gemma-untrained-heads \
  --task "mmath:math500" --strategies "greedy,default,static:0.3,1,static:0.6,1,static:0.6,0.9,mean" \
  --samples 2 --limit 20 --batch-size 16 --max-new-tokens 192 --out /root/evals/gemma-untrained-mmath
