#!/bin/sh
cd /work/main
export MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=17179869184
W=/root/recipe-work/gemma-3-270m
ARITHMETIC="reasoning_gym:basic_arithmetic,min_terms=2,max_terms=2,min_digits=1,max_digits=1"
HELD_OUT="reasoning_gym:chain_sum,min_terms=2,max_terms=2,min_digits=1,max_digits=1"
run_variant() {  # name, extra train flags
  .venv/bin/autodeco train --base gemma-3-270m --data $W/data2.jsonl --out $W/heads-$1 --batch-size 16 --max-length 256 --cache-features --checkpoint-every 100 --seed 0 $2 > $W/train-$1.log 2>&1
  .venv/bin/autodeco eval --model gemma-3-270m --heads $W/heads-$1 --task "$ARITHMETIC" --task "$HELD_OUT" \
    --strategies greedy,default,oracle,mean,autodeco --oracle-temperatures 0.2,0.4,0.6,0.8,1.0 --oracle-top-ps 0.8,0.9,1.0 \
    --samples 4 --limit 200 --batch-size 16 --max-new-tokens 16 --out $W/eval > $W/eval-$1.log 2>&1
  mkdir -p $W/reports/$1 && cp $W/eval/report.md $W/eval/results.json $W/reports/$1/
}
run_variant nomask "--epochs 4 --lr 5e-4 --easy-token-drop 0"
run_variant longer "--epochs 8 --lr 1e-3"
