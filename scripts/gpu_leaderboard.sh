#!/usr/bin/env bash
# The leaderboard's grid (scripts/leaderboard_plan.py: every method with and without DSAIF's
# views, and EXTRA_ROWS) on the reduced ACDC protocol (+experiment=acdc_cpu: 96x96, batch 8 with
# 4 labeled, 2000 steps, validation every 250) in one device call of a lent GPU, under a hard
# wall-clock budget, several runs side by side on the one GPU (small 2-D runs leave it mostly
# idle), with the report, the leaderboard table and a summary in $OUT.
#
# Prepare here, once (both folders are git-ignored and travel only when carried):
#   bash scripts/gpu_wheels.sh              # .whl/: the packages the device lacks
#   python scripts/pack_acdc.py pack        # .gpu/ACDC.h5: ACDC, lossless (46 MiB)
# Then the device call (the device tool's `run`), SEGSSL_COMMIT naming this checkout's commit
# (the device gets the files, not the git history):
#   command:   SEGSSL_COMMIT=<commit> bash scripts/gpu_leaderboard.sh
#   (extra rows: scripts/abd_dsaif_rows.txt unless EXTRA_ROWS / EXTRA_ROWS_FILE say otherwise;
#   EXTRA_ROWS_FILE= for none)
#   carry:     [".whl", ".gpu"]
#   timeout_s: 600
# and here, afterwards, the docs' table from the runs that came back:
#   tar -xzf <files_at>/sweep.tar.gz -C outputs/ && \
#     python scripts/leaderboard_table.py outputs/sweep --into docs/benchmarks.md
#
# Order: install and unpack (about 30 s), the DSAIF view cache built once with every core, then
# scripts/leaderboard_runs.py starts the plan's queue (abd and its DSAIF variants with every
# seed first, then dsaif and cps, abd_bcp, admt, the rest) SEGSSL_GPU_PARALLEL at a time, each
# only if its estimated wall time fits before the deadline (budget less the reserve), stopping
# what still runs at the deadline. In the reserve: segssl report (paired against supervised when
# it ran), the leaderboard table (planned runs without a result are listed under it), the
# summary. Files in $OUT (8 come back at most):
#   summary.txt     what ran, how long each run took, what did not run and why (read first)
#   leaderboard.md  the table scripts/leaderboard_table.py made from the runs
#   report.md, report.csv, curves.png   segssl report of the sweep
#   runs.tsv        every queued run: status, wall seconds, folder
#   gpu_util.csv    nvidia-smi utilisation and memory every 5 s
#   sweep.tar.gz    the sweep without checkpoints (results.json, per-case CSVs, .hydra/, CSV
#                   logs, run logs, the plan): the table and report can be made again from it
# Settings (environment): METHODS (default: every method), FILTERS (none,dsaif), SEEDS (0,1),
# LABELED (3; smoke: 1), EXTRA_ROWS / EXTRA_ROWS_FILE (NAME:OVERRIDES;...); SEGSSL_GPU_BUDGET_S (560: the
# whole script), SEGSSL_GPU_RESERVE_S (60), SEGSSL_GPU_PARALLEL (8 runs at a time),
# SEGSSL_GPU_THREADS (1 torch thread and loader worker a run: 8 runs' main threads and theirs
# fill 16 cores; the main thread launches the GPU work), SEGSSL_GPU_RUN_S (150: a
# run's wall-time estimate until one of its method has finished), SEGSSL_GPU_OVERRIDES (more
# overrides for every run), SEGSSL_GPU_ARCHIVE (.gpu/ACDC.h5), SEGSSL_GPU_DATA (an SSL4MIS
# folder to use instead), SEGSSL_GPU_WHEELS (.whl, "none" to skip), SEGSSL_COMMIT.
# SEGSSL_GPU_SMOKE=1: the same path on the CPU (trainer=cpu, 2 steps at 32x32, no wheels, no
# nvidia-smi; generated data unless SEGSSL_GPU_ARCHIVE or SEGSSL_GPU_DATA is given).
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
t0=$(date +%s)
smoke=${SEGSSL_GPU_SMOKE:-0}
out=${OUT:-$repo/outputs/gpu_leaderboard}
mkdir -p "$out"
summary=$out/summary.txt
: >"$summary"
work=${SEGSSL_GPU_WORK:-/tmp/segssl_gpu_leaderboard}
rm -rf "$work/sweep" "$work/ACDC" "$work/view_cache"
mkdir -p "$work"
sweep=$work/sweep
budget=${SEGSSL_GPU_BUDGET_S:-560}
reserve=${SEGSSL_GPU_RESERVE_S:-60}
parallel=${SEGSSL_GPU_PARALLEL:-8}
threads=${SEGSSL_GPU_THREADS:-1}
export PYTHONUNBUFFERED=1 WANDB_MODE=offline HYDRA_FULL_ERROR=1
# shellcheck source=scripts/gpu_common.sh
source scripts/gpu_common.sh

# -- 1. packages the device lacks, from the carried wheels; segssl from this checkout -----------
install_wheels

# -- 2. data: the packed ACDC, unpacked and checked bit for bit (smoke: generated) -------------
prepare_acdc 1

# -- 3. the plan: rows, their order, the settings every run gets -------------------------------
labeled=3
if [ "$smoke" = 1 ]; then
  labeled=1 # the generated data has 2 training patients
  settings=(trainer=cpu trainer.max_steps=2 trainer.val_check_interval=2 data.image_size=32
    data.batch_size=4 data.labeled_batch_size=2)
else
  settings=(trainer=gpu)
fi
# shellcheck disable=SC2206 # the overrides are words on purpose
settings+=("data.num_workers=$threads" ++filter.cache=true "++filter.cache_dir=$work/view_cache"
  logger=csv trainer.enable_progress_bar=false ${SEGSSL_GPU_OVERRIDES:-})
extra_file=()
# the ABD + DSAIF hypotheses ride along unless other extra rows are given
if [ -z "${EXTRA_ROWS:-}${EXTRA_ROWS_FILE+set}" ]; then EXTRA_ROWS_FILE=scripts/abd_dsaif_rows.txt; fi
[ -n "${EXTRA_ROWS_FILE:-}" ] && extra_file=(--extra-rows-file "$EXTRA_ROWS_FILE")
python3 scripts/leaderboard_plan.py "$sweep" --methods "${METHODS:-}" \
  --filters "${FILTERS:-none,dsaif}" --seeds "${SEEDS:-0,1}" --labeled "${LABELED:-$labeled}" \
  --extra-rows "${EXTRA_ROWS:-}" ${extra_file[@]+"${extra_file[@]}"} \
  --protocol +experiment=acdc_cpu -- "${settings[@]}" >"$work/rows.tsv" 2> >(tee -a "$summary" >&2) \
  || { note "error: no plan (see above)"; exit 2; }
note "plan: $(wc -l <"$work/rows.tsv") rows, $(python3 -c "import json,sys
print(len(json.load(open(sys.argv[1]))['queue']))" "$sweep/leaderboard.json") runs queued; settings: ${settings[*]}"

# -- 4. the GPU's utilisation in the background, then the queue -------------------------------
pids=()
if [ "$smoke" != 1 ] && command -v nvidia-smi >/dev/null; then
  nvidia-smi 2>&1 | tee -a "$summary"
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 5 \
    >"$out/gpu_util.csv" 2>&1 &
  pids+=($!)
fi
deadline=$((t0 + budget - reserve))
note "runs until $((budget - reserve)) s: $parallel at a time, $threads threads each"
python3 scripts/leaderboard_runs.py "$sweep" --data-root "$data" --deadline "$deadline" \
  --parallel "$parallel" --threads "$threads" --estimate-s "${SEGSSL_GPU_RUN_S:-150}" \
  --grace-s 15 --prebuild-cache 2>&1 | tee -a "$summary"
for pid in ${pids[@]+"${pids[@]}"}; do kill "$pid" 2>/dev/null; done
cp "$sweep/runs.tsv" "$out/runs.tsv" 2>/dev/null

# -- 5. report, leaderboard table, the sweep without checkpoints --------------------------------
baseline=()
grep -q "^supervised	" "$work/rows.tsv" && ls "$sweep"/supervised/*/results.json >/dev/null 2>&1 \
  && baseline=(--baseline method=supervised)
# paired against supervised when it ran; without the pairing if that fails
{ timeout 60 python3 -m segssl report "$sweep" ${baseline[@]+"${baseline[@]}"} --overwrite ||
  { [ ${#baseline[@]} -gt 0 ] && timeout 40 python3 -m segssl report "$sweep" --overwrite; }; } \
  >"$work/report.log" 2>&1 || note "report: failed or cut short (its log is in sweep.tar.gz)"
cp "$work/report.log" "$sweep/report.log" 2>/dev/null
for f in report.md report.csv curves.png; do [ -f "$sweep/$f" ] && cp "$sweep/$f" "$out/"; done
timeout 40 python3 scripts/leaderboard_table.py "$sweep" --out "$out/leaderboard.md" 2>&1 \
  | tee -a "$summary" || note "leaderboard table: failed"
cp "$out/leaderboard.md" "$sweep/leaderboard.md" 2>/dev/null
tar -czf "$out/sweep.tar.gz" -C "$work" --exclude='*.ckpt' --exclude='*.png' \
  --exclude='val_overlays' sweep 2>>"$summary" || note "tar of the sweep failed"

# -- 6. summary -------------------------------------------------------------------------------
python3 - "$sweep/runs.tsv" "$out/gpu_util.csv" <<'PY' | tee -a "$summary"
"""Wall time per finished run (by row), what did not run, the GPU's mean utilisation."""
import csv, statistics, sys
from collections import defaultdict

try:
    rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
except OSError:
    rows = []
walls = defaultdict(list)
for r in rows:
    if r["status"] == "finished":
        walls[r["row"]].append(float(r["wall_s"]))
for row, values in walls.items():
    print(f"wall_s {row}: {' '.join(f'{v:.0f}' for v in values)} (mean {statistics.mean(values):.0f})")
for r in rows:
    if r["status"] != "finished":
        print(f"not finished: {r['row']} labeled {r['labeled']} seed {r['seed']}: {r['status']}")
print(f"finished {sum(len(v) for v in walls.values())} of {len(rows)} queued runs")
util = []
try:
    for r in csv.reader(open(sys.argv[2])):
        try:
            util.append(float(r[1].strip().split()[0]))
        except (IndexError, ValueError):
            pass
except OSError:
    pass
if util:
    print(f"gpu_util_mean {statistics.mean(util):.1f} %  max {max(util):.0f} %  samples {len(util)}")
PY
note "wall time of the whole script: $(elapsed) s"
