# The task configurations of the evidence run (sourced by the step scripts). Chosen on the dev split
# by search_tasks.sh (greedy pass@1 in 0.1-0.9; see benchmarks/results/evidence-gemma-3-270m/README.md).
# size=4000 draws enough questions for >= 500 test problems where the question space allows.
RG=reasoning_gym
declare -A TASK=(
  [arithmetic]="$RG:basic_arithmetic,min_terms=2,max_terms=2,min_digits=1,max_digits=1,size=4000"
  [letters]="$RG:letter_counting,size=4000"
  [chain_worked]="$RG:chain_sum,min_terms=3,max_terms=3,min_digits=1,max_digits=1,worked=true,size=4000"
  [gcd]="$RG:gcd,min_value=1,max_value=45,size=4000"
  [sorting]="$RG:number_sorting,min_numbers=3,max_numbers=3,min_decimals=0,max_decimals=0,min_value=0,max_value=99,size=4000"
)
TRAIN_TASKS=(arithmetic letters chain_worked)  # their train splits give the heads' data
HELD_OUT_TASKS=(gcd sorting)                   # never trained on, not used to choose a variant
ALL_TASKS=("${TRAIN_TASKS[@]}" "${HELD_OUT_TASKS[@]}")
MAX_NEW_TOKENS=64  # every answer ends at its stop string long before (the longest, chain_worked, ~26 tokens)
export MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=17179869184  # reuse vocabulary-sized buffers
