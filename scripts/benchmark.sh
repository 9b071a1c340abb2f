#!/usr/bin/env bash
# The laptop benchmark and its leaderboard: rows x seeds x labeled counts on the reduced ACDC
# protocol (+experiment=acdc_cpu: 96x96, batch 8 with 4 labeled, 2000 steps, validation every
# 250) as Hydra multiruns, one per row, then the report paired against the supervised baseline
# (report.md / .csv, report.png, curves.png in the sweep folder) and the leaderboard table
# (leaderboard.md, scripts/leaderboard_table.py). Figures from it are REDUCED-protocol figures.
#
# Usage: bash scripts/benchmark.sh ACDC_ROOT [SWEEP_DIR [OVERRIDE ...]]
#   OVERRIDEs go to every run (e.g. trainer.accelerator=gpu).
#   Rows (scripts/leaderboard_plan.py): every method of METHODS with every filter of FILTERS;
#   CPS with DSAIF's views is the row `dsaif` (run as method=dsaif), supervised has no filtered
#   row (one network on one view). EXTRA_ROWS="NAME:OVERRIDES;..." (or EXTRA_ROWS_FILE=PATH,
#   one a line) adds named rows, e.g.
#   EXTRA_ROWS="abd+dsaif/raw-displace:method=abd filter=dsaif method.displace_on=raw".
#   METHODS="supervised,cps" (default: every method of conf/method/), FILTERS="none,dsaif",
#   SEEDS="0,1", LABELED="3,7" override the grid.
#   JOBS=N runs N multiruns side by side, the seeds dealt out among them (sweep folders
#   SWEEP_DIR/part<k>, each running every row), each with CPU_CORES/N threads: small 2-D
#   networks use a core better one run per core than several cores per run. Default 1: the
#   grid one run at a time.
#   UPDATE_DOCS=1 also writes the leaderboard table into docs/benchmarks.md between its
#   leaderboard markers (UPDATE_DOCS=PAGE: into that page).
# A row whose multirun fails does not stop the others; the report and the table are made from
# the runs that finished (the table lists the missing ones) and the script then exits 1.
# Each run takes well under an hour on a laptop CPU.
set -euo pipefail
if [[ $# -lt 1 ]]; then
  echo "usage: bash scripts/benchmark.sh ACDC_ROOT [SWEEP_DIR [OVERRIDE ...]]" >&2
  exit 2
fi
# paths as the caller typed them (relative to where they stand), then run from the checkout
root=$(realpath -m "$1")
sweep=$(realpath -m "${2:-outputs/benchmark/acdc_cpu_$(date +%Y-%m-%d_%H-%M-%S)}")
page=${UPDATE_DOCS:-}
case $page in
  "" | 0) page="" ;;
  1) page=docs/benchmarks.md ;;
  *) page=$(realpath -m "$page") ;;
esac
cd "$(dirname "$0")/.."
overrides=("${@:3}")
seeds=${SEEDS:-0,1}
labeled=${LABELED:-3,7}
jobs=${JOBS:-1}
export PYTHONUNBUFFERED=1 WANDB_MODE=${WANDB_MODE:-offline}

IFS=, read -ra seed_list <<< "$seeds"
if [[ ! $jobs =~ ^[1-9][0-9]*$ ]]; then
  echo "JOBS must be a positive whole number, got '$jobs'" >&2
  exit 2
fi
if (( jobs > ${#seed_list[@]} )); then jobs=${#seed_list[@]}; fi

# the rows (FOLDER<TAB>OVERRIDES) and the plan the table reads, SWEEP_DIR/leaderboard.json
extra_file=()
if [[ -n ${EXTRA_ROWS_FILE:-} ]]; then extra_file=(--extra-rows-file "$EXTRA_ROWS_FILE"); fi
plan=$(python scripts/leaderboard_plan.py "$sweep" --methods "${METHODS:-}" \
  --filters "${FILTERS:-none,dsaif}" --seeds "$seeds" --labeled "$labeled" \
  --extra-rows "${EXTRA_ROWS:-}" ${extra_file[@]+"${extra_file[@]}"} \
  --protocol +experiment=acdc_cpu -- ${overrides[@]+"${overrides[@]}"})
mapfile -t rows <<< "$plan"

multirun() {  # multirun SEEDS SWEEP_DIR ROW_OVERRIDE...
  local seeds=$1 dir=$2
  shift 2
  python -m segssl train -m +experiment=acdc_cpu "data.root=$root" "$@" \
    "seed=$seeds" "data.labeled=$labeled" "hydra.sweep.dir=$dir" \
    ${overrides[@]+"${overrides[@]}"}
}

all_rows() {  # all_rows SEEDS FOLDER: every row, one multirun after the other
  local failed=0 row dir words row_overrides IFS=$' \t\n'  # words, whatever the caller's IFS
  for row in "${rows[@]}"; do
    dir=${row%%$'\t'*}
    words=${row#*$'\t'}
    read -ra row_overrides <<< "$words"
    if ! multirun "$1" "$2/$dir" "${row_overrides[@]}"; then
      echo "row $dir: its multirun failed (finished runs are kept)" >&2
      failed=1
    fi
  done
  return $failed
}

failed=0
if (( jobs == 1 )); then
  all_rows "$seeds" "$sweep" || failed=1
else
  threads=$(( $(nproc) / jobs )); (( threads >= 1 )) || threads=1
  pids=()
  for (( k = 0; k < jobs; k++ )); do
    part=()
    for (( i = k; i < ${#seed_list[@]}; i += jobs )); do part+=("${seed_list[i]}"); done
    mkdir -p "$sweep/part$k"
    (IFS=,; OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads \
      all_rows "${part[*]}" "$sweep/part$k" > "$sweep/part$k/multirun.log" 2>&1) &
    pids+=($!)
    echo "part$k: seeds ${part[*]} ($threads threads), log $sweep/part$k/multirun.log"
  done
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  if (( failed )); then
    echo "a multirun failed: see $sweep/part*/multirun.log (finished runs are kept)" >&2
  fi
fi

baseline=()
if printf '%s\n' "${rows[@]}" | grep -q $'^supervised\t'; then
  baseline=(--baseline method=supervised)
fi
if python -m segssl report "$sweep" ${baseline[@]+"${baseline[@]}"} --overwrite; then
  echo "report: $sweep/report.md (figures: report.png, curves.png)"
else
  failed=1
fi
python scripts/leaderboard_table.py "$sweep" ${page:+--into "$page"}
exit $failed
