#!/usr/bin/env bash
# Step 1 of the evidence run: find task configurations where Gemma-3-270M's greedy pass@1 lies in
# 0.1-0.9, on the dev split only (the test split is never looked at while choosing).
# Greedy, first 80 (LIMIT) dev problems per candidate; resumable (rerun the same command).
# Round 1 (plain answers, 48 new tokens) found few long-answer tasks in range; round 2 (ROUND=2)
# tries worked few-shot answers (worked=true), 128 new tokens, LIMIT=40 (run: ROUND=2 LIMIT=40 ...),
# and a wider gcd (the round-1 one has fewer than 500 test questions).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUND=${ROUND:-1}
OUT=${OUT:-benchmarks/results/evidence-gemma-3-270m/search-round$ROUND}
RG=reasoning_gym
DEV=split=dev,size=2000
tasks=(
  "$RG:basic_arithmetic,min_terms=2,max_terms=2,min_digits=1,max_digits=1,$DEV"
  "$RG:basic_arithmetic,min_terms=2,max_terms=2,min_digits=1,max_digits=2,$DEV"
  "$RG:chain_sum,min_terms=2,max_terms=2,min_digits=1,max_digits=1,$DEV"
  "$RG:chain_sum,min_terms=2,max_terms=2,min_digits=1,max_digits=2,$DEV"
  "$RG:letter_counting,min_words=1,max_words=3,$DEV"
  "$RG:letter_counting,$DEV"
  "$RG:leg_counting,min_animals=1,max_animals=1,min_instances=1,max_instances=3,$DEV"
  "$RG:gcd,min_value=1,max_value=30,$DEV"
  "$RG:word_sequence_reversal,min_words=3,max_words=3,$DEV"
  "$RG:word_sequence_reversal,min_words=3,max_words=5,$DEV"
  "$RG:word_sorting,min_words=3,max_words=3,min_word_length=3,max_word_length=7,$DEV"
  "$RG:sentence_reordering,min_words_in_sentence=3,max_words_in_sentence=5,$DEV"
  "$RG:spell_backward,min_word_len=3,max_word_len=5,$DEV"
  "$RG:number_sorting,min_numbers=3,max_numbers=3,min_decimals=0,max_decimals=0,min_value=0,max_value=99,$DEV"
  "$RG:number_filtering,min_numbers=3,max_numbers=4,min_decimals=0,max_decimals=0,min_value=0,max_value=99,$DEV"
  "$RG:letter_jumble,min_words=3,max_words=4,min_word_len=3,max_word_len=8,min_corruption_level=0.1,max_corruption_level=0.3,$DEV"
  "$RG:caesar_cipher,min_words=2,max_words=3,min_rotation=1,max_rotation=1,$DEV"
)
if [ "$ROUND" = 2 ]; then
  tasks=(
    "$RG:chain_sum,min_terms=2,max_terms=2,min_digits=1,max_digits=1,worked=true,$DEV"
    "$RG:chain_sum,min_terms=3,max_terms=3,min_digits=1,max_digits=1,worked=true,$DEV"
    "$RG:chain_sum,min_terms=2,max_terms=3,min_digits=1,max_digits=2,worked=true,$DEV"
    "$RG:chain_sum,min_terms=3,max_terms=3,min_digits=1,max_digits=1,$DEV"
    "$RG:letter_counting,min_words=1,max_words=3,worked=true,$DEV"
    "$RG:gcd,min_value=1,max_value=45,$DEV"
  )
fi
TOKENS=$([ "$ROUND" = 2 ] && echo 128 || echo 48)
args=()
for t in "${tasks[@]}"; do args+=(--task "$t"); done
MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=17179869184 \
  .venv/bin/autodeco eval --model gemma-3-270m --dtype float32 --strategies greedy --samples 1 --limit "${LIMIT:-80}" \
  --max-new-tokens "$TOKENS" "${args[@]}" --out "$OUT"
