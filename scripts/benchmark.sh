#!/usr/bin/env bash
# The laptop benchmark: methods x seeds x labeled counts on the reduced ACDC protocol
# (+experiment=acdc_cpu: 96x96, batch 8 with 4 labeled, 2000 steps, validation every 250) as
# Hydra multiruns, then the report paired against the supervised baseline (report.md / .csv,
# report.png, curves.png in the sweep folder). Figures from it are REDUCED-protocol figures.
#
# Usage: bash scripts/benchmark.sh ACDC_ROOT [SWEEP_DIR [OVERRIDE ...]]
#   OVERRIDEs go to every run (e.g. trainer.accelerator=gpu).
#   METHODS="supervised,cps,dsaif" SEEDS="0,1" LABELED="3,7" override the grid.
#   JOBS=N runs N multiruns side by side, the seeds dealt out among them (sweep folders
#   SWEEP_DIR/part<k>), each with CPU_CORES/N threads: small 2-D networks use a core better one
#   run per core than several cores per run. Default 1: the grid one run at a time.
# Each run takes well under an hour on a laptop CPU.
set -euo pipefail
if [[ $# -lt 1 ]]; then
  echo "usage: bash scripts/benchmark.sh ACDC_ROOT [SWEEP_DIR [OVERRIDE ...]]" >&2
  exit 2
fi
# paths as the caller typed them (relative to where they stand), then run from the checkout
root=$(realpath -m "$1")
sweep=$(realpath -m "${2:-outputs/benchmark/acdc_cpu_$(date +%Y-%m-%d_%H-%M-%S)}")
cd "$(dirname "$0")/.."
overrides=("${@:3}")
methods=${METHODS:-supervised,cps,dsaif}
seeds=${SEEDS:-0,1}
labeled=${LABELED:-3,7}
jobs=${JOBS:-1}
export PYTHONUNBUFFERED=1 WANDB_MODE=${WANDB_MODE:-offline}

multirun() {  # multirun SEEDS SWEEP_DIR
  python -m segssl train -m +experiment=acdc_cpu "data.root=$root" \
    "method=$methods" "seed=$1" "data.labeled=$labeled" "hydra.sweep.dir=$2" \
    ${overrides[@]+"${overrides[@]}"}
}

IFS=, read -ra seed_list <<< "$seeds"
if [[ ! $jobs =~ ^[1-9][0-9]*$ ]]; then
  echo "JOBS must be a positive whole number, got '$jobs'" >&2
  exit 2
fi
if (( jobs > ${#seed_list[@]} )); then jobs=${#seed_list[@]}; fi

if (( jobs == 1 )); then
  multirun "$seeds" "$sweep"
else
  threads=$(( $(nproc) / jobs )); (( threads >= 1 )) || threads=1
  pids=()
  for (( k = 0; k < jobs; k++ )); do
    part=()
    for (( i = k; i < ${#seed_list[@]}; i += jobs )); do part+=("${seed_list[i]}"); done
    mkdir -p "$sweep/part$k"
    (IFS=,; OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads \
      multirun "${part[*]}" "$sweep/part$k" > "$sweep/part$k/multirun.log" 2>&1) &
    pids+=($!)
    echo "part$k: seeds ${part[*]} ($threads threads), log $sweep/part$k/multirun.log"
  done
  failed=0
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  if (( failed )); then
    echo "a multirun failed: see $sweep/part*/multirun.log (finished runs are kept)" >&2
    exit 1
  fi
fi

python -m segssl report "$sweep" --baseline method=supervised --overwrite
echo "report: $sweep/report.md (figures: report.png, curves.png)"
