# Shared by the scripts that run on a lent GPU machine (gpu_protocol.sh, gpu_leaderboard.sh):
# the log line, the packages carried as wheels, the packed ACDC. Source it after setting t0,
# summary, smoke and work; install_wheels sets PYTHONPATH, prepare_acdc sets data.
# shellcheck shell=bash
elapsed() { echo $(($(date +%s) - t0)); }
note() { echo "[$(elapsed) s] $*" | tee -a "$summary"; }

# packages the device lacks, from the carried wheels (SEGSSL_GPU_WHEELS, .whl; none in a smoke
# run); segssl from this checkout
install_wheels() {
  local wheels=${SEGSSL_GPU_WHEELS:-.whl}
  [ "$smoke" = 1 ] && wheels=${SEGSSL_GPU_WHEELS:-none}
  if [ "$wheels" != none ]; then
    if ! ls "$wheels"/*.whl >/dev/null 2>&1; then
      note "error: no wheels in $wheels (run scripts/gpu_wheels.sh here and carry .whl)"
      exit 2
    fi
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site "$wheels"/*.whl || { note "error: wheel install failed"; exit 2; }
    export PYTHONPATH=/tmp/site:$repo
    note "installed $(ls "$wheels"/*.whl | wc -l) wheels into /tmp/site"
  else
    export PYTHONPATH=$repo
  fi
  python3 -c "import segssl, hydra, monai, higra" || { note "error: imports fail"; exit 2; }
}

# the data: SEGSSL_GPU_DATA as it is, else the packed ACDC (SEGSSL_GPU_ARCHIVE, .gpu/ACDC.h5)
# unpacked into $work/ACDC and checked bit for bit; with generate_smoke_data=1 a smoke run
# without an archive gets a small generated set instead
prepare_acdc() {
  local generate_smoke_data=${1:-0}
  if [ -n "${SEGSSL_GPU_DATA:-}" ]; then
    data=$SEGSSL_GPU_DATA
  elif [ "$smoke" = 1 ] && [ "$generate_smoke_data" = 1 ] && [ -z "${SEGSSL_GPU_ARCHIVE:-}" ]; then
    data=$work/ACDC
    python3 -c "import sys; from segssl.data.synthetic import ensure_synthetic_dataset as e
e(sys.argv[1], num_train_patients=2, num_val_patients=1, num_test_patients=1, image_size=32,
  slices_per_volume=4, seed=3)" "$data" || { note "error: no smoke data"; exit 2; }
  else
    data=$work/ACDC
    local archive=${SEGSSL_GPU_ARCHIVE:-.gpu/ACDC.h5}
    python3 scripts/pack_acdc.py unpack --archive "$archive" --dest "$data" 2>&1 \
      | tee -a "$summary" || { note "error: unpack of $archive failed"; exit 2; }
  fi
  note "data: $data"
}
