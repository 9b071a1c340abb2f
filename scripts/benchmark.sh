#!/usr/bin/env bash
# The laptop benchmark of issue 13: methods x seeds x labeled counts on the reduced ACDC protocol
# (+experiment=acdc_cpu: 96x96, batch 8 with 4 labeled, 2000 steps, validation every 250) as one
# Hydra multirun, then the report paired against the supervised baseline (report.md / .csv,
# report.png, curves.png in the sweep folder). Figures from it are REDUCED-protocol figures.
#
# Usage: bash scripts/benchmark.sh ACDC_ROOT [SWEEP_DIR]
#   METHODS="supervised,cps,dsaif" SEEDS="0,1" LABELED="3,7" override the grid.
# Each run takes well under an hour on a laptop CPU; the grid is run one job at a time.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -lt 1 ]]; then
  echo "usage: bash scripts/benchmark.sh ACDC_ROOT [SWEEP_DIR]" >&2
  exit 2
fi
root=$1
sweep=${2:-outputs/benchmark/acdc_cpu_$(date +%Y-%m-%d_%H-%M-%S)}
methods=${METHODS:-supervised,cps,dsaif}
seeds=${SEEDS:-0,1}
labeled=${LABELED:-3,7}
export PYTHONUNBUFFERED=1 WANDB_MODE=${WANDB_MODE:-offline}

python -m segssl train -m +experiment=acdc_cpu "data.root=$root" \
  "method=$methods" "seed=$seeds" "data.labeled=$labeled" \
  "hydra.sweep.dir=$sweep"

python -m segssl report "$sweep" --baseline method=supervised --overwrite
echo "report: $sweep/report.md (figures: report.png, curves.png)"
