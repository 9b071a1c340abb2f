#!/usr/bin/env bash
# GPU checks, under 5 minutes on one modern GPU (the full ACDC protocol is
# scripts/gpu_protocol.sh):
#   1. the test suite's GPU-marked tests;
#   2. a 300-step ACDC-size DSAIF run (256x256, batch 24 with 12 labeled, bf16-mixed,
#      channels-last) on the built-in synthetic data: steps per second;
#   3. scripts/bench_train.py on the GPU (segssl vs the plain PyTorch loop, peak memory).
# Usage: bash scripts/gpu_check.sh [OUT_DIR]   (default $OUT, else outputs/gpu_check)
# On the device machine, with the wheels of scripts/gpu_wheels.sh: the device tool's `run` with
#   command: bash scripts/gpu_check.sh   carry: [".whl"]   timeout_s: 420
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-outputs/gpu_check}}
mkdir -p "$out"
export WANDB_MODE=offline PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
if ls .whl/*.whl >/dev/null 2>&1; then # packages the device machine lacks
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"

echo "== 1. GPU-marked tests"
python3 -m pytest -m gpu -q -p no:cacheprovider 2>&1 | tee "$out/tests.txt" || true

echo "== 2. 300-step DSAIF run, 256x256, batch 24, bf16-mixed"
start=$(date +%s)
python3 -m segssl train trainer=gpu trainer.precision=bf16-mixed model.channels_last=true \
  data.image_size=256 data.batch_size=24 data.labeled_batch_size=12 \
  data.synthetic.image_size=256 trainer.max_steps=300 trainer.val_check_interval=300 \
  logger=csv test=false hydra.run.dir=/tmp/gpu_check_run 2>&1 | tail -n 5 | tee "$out/run.txt"
python3 - /tmp/gpu_check_run <<'PY' | tee -a "$out/run.txt"
import csv, pathlib, statistics, sys
rows = list(csv.DictReader(open(pathlib.Path(sys.argv[1]) / "csv/version_0/metrics.csv")))
times = [float(r["time/step_s"]) for r in rows if r.get("time/step_s")]
if times:
    print(f"time/step_s mean {statistics.mean(times):.4f} s ({1 / statistics.mean(times):.1f} steps/s)")
PY
echo "wall time of the 300-step run including start-up and one validation: $(($(date +%s) - start)) s" |
  tee -a "$out/run.txt"

echo "== 3. bench_train on the GPU"
python3 scripts/bench_train.py --device cuda --image-size 256 --batch-size 24 \
  --labeled-batch-size 12 --precision bf16-mixed --steps 60 --warmup 10 --rounds 3 \
  2>&1 | grep -v -i warn | tee "$out/bench_train.txt"
