#!/usr/bin/env bash
# The full ACDC protocol (+experiment=acdc: 256x256, batch 24 with 12 labeled, 30000 steps,
# validation every 200) in one ten-minute device call, under a hard time limit, with its figures
# streamed into $OUT (what the device tool brings back): steps per second, GPU utilisation,
# validation share, wall time, and the test Dice if the run finished.
#
# Prepare here, once (both folders are git-ignored and travel only when carried):
#   bash scripts/gpu_wheels.sh              # .whl/: hydra-core, omegaconf, antlr4, monai,
#                                           #   higra, nibabel for cp312 manylinux (7.4 MiB)
#   python scripts/pack_acdc.py pack        # .gpu/ACDC.h5: ACDC, lossless (46.0 MiB)
# Then the device call (the device tool's `run`):
#   command:   bash scripts/gpu_protocol.sh
#   carry:     [".whl", ".gpu"]
#   timeout_s: 600
# With 15 minutes of device time a session gets one such call (the machine's start takes 1-2
# minutes): set-up faults (wheels, imports, data) stop the script within about 30 s, so a fixed
# rerun still fits; with less time left than 13 minutes, pass SEGSSL_GPU_BUDGET_S=<budget_left_s
# - 150> in front of the command and a timeout_s above it.
# The script keeps itself inside SEGSSL_GPU_BUDGET_S (default 570 s) of the call's 600: the
# install and unpack come first (about 30 s), training gets what is left less a reserve, and is
# stopped by SIGTERM at its limit (segssl then writes a resumable checkpoint and exits 143); a
# stopped run's best checkpoint is then tested (val split: ACDC here has no test.list) in the
# reserve, so a test Dice comes back either way. Files in $OUT (8 at most come back):
#   summary.txt    nvidia-smi at the start, then the figures as they become known (read first)
#   progress.txt   every 15 s: step, steps/s overall and of the last interval, validations
#   gpu_util.csv   nvidia-smi utilisation and memory every 5 s
#   train.log      the training command's output
#   metrics.csv    the run's CSV metrics (time/step_s, val/..., test/...)
#   results.json   the test metrics (HD95/ASD too): the finished run's, or its best checkpoint's
#   phases.json    training and validation wall time (GPU synchronised), after each validation
# Settings (environment): SEGSSL_GPU_SMOKE=1 a CPU smoke run (trainer=cpu, 4 steps at 32x32,
# no nvidia-smi, no wheels); SEGSSL_GPU_ARCHIVE (.gpu/ACDC.h5); SEGSSL_GPU_DATA (an SSL4MIS
# folder to use instead of unpacking); SEGSSL_GPU_WHEELS (.whl, "none" to skip);
# SEGSSL_GPU_BUDGET_S (570); SEGSSL_GPU_RESERVE_S (75: after training, the summary and, for a
# run stopped at its limit, a test of its best checkpoint if 40 s are left);
# SEGSSL_GPU_OVERRIDES (extra training overrides, e.g. "model.compile=true").
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
t0=$(date +%s)
smoke=${SEGSSL_GPU_SMOKE:-0}
out=${OUT:-$repo/outputs/gpu_protocol}
mkdir -p "$out"
summary=$out/summary.txt
: >"$summary"
work=${SEGSSL_GPU_WORK:-/tmp/segssl_gpu_protocol}
rm -rf "$work/ACDC" "$work/run" "$work/view_cache"
mkdir -p "$work"
budget=${SEGSSL_GPU_BUDGET_S:-570}
reserve=${SEGSSL_GPU_RESERVE_S:-75}
export PYTHONUNBUFFERED=1 WANDB_MODE=offline HYDRA_FULL_ERROR=1
# shellcheck source=scripts/gpu_common.sh
source scripts/gpu_common.sh

# -- 1. packages the device lacks, from the carried wheels; segssl from this checkout -----------
install_wheels

# -- 2. data: the packed ACDC, unpacked and checked bit for bit -------------------------------
prepare_acdc

# -- 3. the GPU, and its utilisation in the background --------------------------------------
pids=()
if [ "$smoke" != 1 ] && command -v nvidia-smi >/dev/null; then
  nvidia-smi 2>&1 | tee -a "$summary"
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 5 \
    >"$out/gpu_util.csv" 2>&1 &
  pids+=($!)
fi

# -- 4. training under a hard limit, with a progress monitor and a phase timer ----------------
run=$work/run
# a callback (given on the command line, trusted like your own config) that times validation
# exactly: GPU synchronised at its start and end, written to $OUT/phases.json after each one
mkdir -p "$work/py"
cat >"$work/py/gpu_phase_timer.py" <<'PY'
"""Wall time of training and of validation (overlays included), for the validation share."""
import json
import time
from pathlib import Path

import pytorch_lightning as pl
import torch


class PhaseTimer(pl.Callback):
    def __init__(self, path: str) -> None:
        self.path, self.validation_s, self.validations = Path(path), 0.0, 0
        self.train_start = self.started = None

    def _sync(self, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_start(self, trainer, pl_module) -> None:
        self.train_start = time.perf_counter()

    def on_validation_start(self, trainer, pl_module) -> None:
        self._sync(pl_module)
        self.started = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        self._sync(pl_module)
        self.validation_s += time.perf_counter() - self.started
        self.validations += 1
        self.dump(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self.dump(trainer)

    def dump(self, trainer) -> None:
        if self.train_start is None or not trainer.is_global_zero:
            return
        fit_s = time.perf_counter() - self.train_start
        state = {
            "step": trainer.global_step,
            "fit_s": round(fit_s, 2),
            "validation_s": round(self.validation_s, 2),
            "validations": self.validations,
            "validation_share": round(self.validation_s / fit_s, 4) if fit_s else None,
            "steps_per_s_fit": round(trainer.global_step / fit_s, 3) if fit_s else None,
        }
        self.path.write_text(json.dumps(state) + "\n")
PY
export PYTHONPATH=$PYTHONPATH:$work/py
if [ "$smoke" = 1 ]; then
  settings=(trainer=cpu trainer.max_steps=4 trainer.val_check_interval=2 data.image_size=32
    data.batch_size=4 data.labeled_batch_size=2 data.labeled=1 data.num_workers=0
    data.on_device=true filter.cache=true)
else
  settings=(trainer=gpu trainer.precision=bf16-mixed data.on_device=true filter.cache=true)
fi
# shellcheck disable=SC2206 # the overrides are words on purpose
extra=(${SEGSSL_GPU_OVERRIDES:-})
limit=$((budget - $(elapsed) - reserve))
[ "$limit" -lt 30 ] && limit=30
note "training for at most $limit s: ${settings[*]} ${extra[*]}"
python3 - "$run" "$out/progress.txt" <<'PY' &
"""Every 15 s: the newest logged step, steps per second overall and of the last interval."""
import csv, sys, time
from pathlib import Path

run, progress = Path(sys.argv[1]), Path(sys.argv[2])
start, last = time.time(), (time.time(), 0)
with progress.open("w") as out:
    out.write("seconds step steps_per_s interval_steps_per_s validations mean_step_ms\n")
    while True:
        time.sleep(15)
        files = list(run.glob("csv/version_*/metrics.csv"))
        if not files:
            continue
        try:
            rows = list(csv.DictReader(files[0].open()))
        except (OSError, csv.Error):
            continue
        steps = [int(r["step"]) for r in rows if r.get("step")]
        step = max(steps, default=0)
        vals = sum(1 for r in rows if r.get("val/dice"))
        times = [float(r["time/step_s"]) for r in rows if r.get("time/step_s")]
        now = time.time()
        rate = (step - last[1]) / max(now - last[0], 1e-9)
        mean = 1000 * sum(times) / len(times) if times else float("nan")
        out.write(f"{now - start:.0f} {step} {step / (now - start):.2f} {rate:.2f} {vals} {mean:.2f}\n")
        out.flush()
        last = (now, step)
PY
pids+=($!)
train_start=$(date +%s)
timeout -s TERM -k 30 "$limit" python3 -m segssl train +experiment=acdc data.root="$data" \
  logger=csv test=true filter.cache_dir="$work/view_cache" hydra.run.dir="$run" \
  +callbacks.phase_timer._target_=gpu_phase_timer.PhaseTimer \
  +callbacks.phase_timer.path="$out/phases.json" \
  "${settings[@]}" "${extra[@]}" >"$out/train.log" 2>&1
status=$?
train_s=$(($(date +%s) - train_start))
for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
note "training command exit $status after $train_s s (124/143: stopped at the limit)"

# -- 5. a run stopped at its limit: test its best checkpoint in the time left -----------------
results=$run/results.json
left=$((budget - $(elapsed) - 10))
best=$(python3 -c "
import re, sys, pathlib
found = [(float(m.group(1)), p) for p in pathlib.Path(sys.argv[1]).glob('checkpoints/best_*.ckpt')
         if (m := re.search(r'dice([0-9.]+[0-9])', p.name))]
print(max(found)[1] if found else '')" "$run")
if [ ! -f "$results" ] && [ -n "$best" ] && [ "$left" -ge 40 ]; then
  note "testing the stopped run's best checkpoint $(basename "$best") for at most $left s"
  # the run's stored config names the phase timer above: trusted here, for this test only
  SEGSSL_TRUSTED_TARGETS=gpu_phase_timer.PhaseTimer timeout -s TERM -k 10 "$left" \
    python3 -m segssl test ckpt_path="$best" hydra.run.dir="$work/test_run" \
    >>"$out/train.log" 2>&1
  note "test command exit $?"
  results=$work/test_run/results.json
fi

# -- 6. figures ------------------------------------------------------------------------------
metrics=$(ls "$run"/csv/version_*/metrics.csv 2>/dev/null | head -n 1)
[ -n "$metrics" ] && cp "$metrics" "$out/metrics.csv"
[ -f "$results" ] && cp "$results" "$out/results.json"
python3 - "$run" "$train_s" "$out/gpu_util.csv" "$results" <<'PY' | tee -a "$summary"
"""Steps per second, validation share, GPU utilisation and the test Dice of the run."""
import csv, json, statistics, sys
from pathlib import Path

run, train_s, util_path = Path(sys.argv[1]), float(sys.argv[2]), Path(sys.argv[3])
files = list(run.glob("csv/version_*/metrics.csv"))
rows = list(csv.DictReader(files[0].open())) if files else []
step = max((int(r["step"]) for r in rows if r.get("step")), default=0)
times = [float(r["time/step_s"]) for r in rows if r.get("time/step_s")]
vals = [float(r["val/dice"]) for r in rows if r.get("val/dice")]
print(f"steps_done {step}")
print(f"train_command_wall_s {train_s:.0f}")
print(f"steps_per_s_overall {step / train_s:.2f}  # start-up, validation and checkpoints included")
if times:
    mean = statistics.mean(times)
    print(f"step_ms {1000 * mean:.2f}  # time/step_s: training steps, data included")
    print(f"steps_per_s_training {1 / mean:.2f}")
    # what the command spent besides training steps: start-up, validation, checkpoints, test
    print(f"non_training_share {max(0.0, 1 - step * mean / train_s):.3f}  # of the command")
print(f"validations {len(vals)}  best_val_dice {max(vals):.4f}" if vals else "validations 0")
if util_path.is_file():
    util = []
    for r in csv.reader(util_path.open()):
        try:
            util.append(float(r[1].strip().split()[0]))
        except (IndexError, ValueError):
            pass
    busy = [u for u in util if u > 0]
    if util:
        print(f"gpu_util_mean {statistics.mean(util):.1f} %  busy_mean {statistics.mean(busy or [0]):.1f} %  samples {len(util)}")
phases = Path(sys.argv[3]).with_name("phases.json")
if phases.is_file():
    state = json.loads(phases.read_text())
    print(
        f"validation_share {state['validation_share']}  # {state['validations']} validations "
        f"took {state['validation_s']} s of {state['fit_s']} s of fit (GPU synchronised)"
    )
    print(f"steps_per_s_fit {state['steps_per_s_fit']}  # validation and checkpoints included")
results = Path(sys.argv[4])
if results.is_file():
    data = json.loads(results.read_text())
    chosen = data.get("selection_model")
    for name, summary in data.get("models", {}).items():
        mean = {k: round(v, 4) for k, v in summary.get("mean", {}).items() if isinstance(v, float)}
        mark = "  (selected)" if name == chosen else ""
        print(f"test split={data.get('split')} model={name}{mark} {mean}  # {data.get('checkpoint')}")
else:
    print("test: not reached (no results.json)")
PY
note "wall time of the whole script: $(elapsed) s"
