#!/bin/sh
# Decoding commands on Gemma-3-270M: the shipped heads (no command training) against heads trained
# with --nl-control from the shipped heads, on the same self-generated data and settings as
# recipes/gemma-3-270m.sh; then accuracy without commands, as in the recipe's evaluation.
set -eu
WORK=${1:-recipe-work/gemma-3-270m}
ARITHMETIC="reasoning_gym:basic_arithmetic,min_terms=2,max_terms=2,min_digits=1,max_digits=1"
HELD_OUT="reasoning_gym:chain_sum,min_terms=2,max_terms=2,min_digits=1,max_digits=1"
export MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=17179869184

autodeco train --base gemma-3-270m --data "$WORK/data.jsonl" --out "$WORK/heads-nl" --heads gemma-3-270m \
  --epochs 4 --lr 5e-4 --batch-size 16 --max-length 256 --cache-features --checkpoint-every 100 --seed 0 --easy-token-drop 0 \
  --nl-control --nl-variants 3 --nl-weight 10 $( [ -d "$WORK/heads-nl/checkpoints" ] && echo --resume )
for heads in gemma-3-270m "$WORK/heads-nl"; do
  name=$([ "$heads" = gemma-3-270m ] && echo shipped-heads || echo nl-control-heads)
  autodeco eval-control --model gemma-3-270m --heads "$heads" --task "$ARITHMETIC" --prompts 100 --max-new-tokens 16 \
    --batch-size 8 --out "benchmarks/results/control-gemma-3-270m/$name"
done
autodeco eval --model gemma-3-270m --heads "$WORK/heads-nl" --task "$ARITHMETIC" --task "$HELD_OUT" --strategies autodeco \
  --samples 4 --limit 200 --batch-size 16 --max-new-tokens 16 --out "benchmarks/results/control-gemma-3-270m/nl-control-accuracy"
