#!/usr/bin/env bash
# Wheels the device machine lacks (its image has torch, pytorch-lightning, torchmetrics, h5py,
# numpy, scipy, matplotlib, pillow, tqdm, pyyaml, packaging; not these), for CPython 3.12 on
# manylinux x86-64, downloaded here into the git-ignored .whl/ that a device call carries.
# segssl itself travels as source (PYTHONPATH=. in scripts/gpu_protocol.sh), wandb is not needed
# with logger=csv. Re-running replaces .whl/ (one version of each: two stop the install there).
#   bash scripts/gpu_wheels.sh            # then: du -sh .whl
set -euo pipefail
cd "$(dirname "$0")/.."
# the versions this checkout is developed and tested with
PINS=(
  hydra-core==1.3.8
  omegaconf==2.3.1
  monai==1.6.1
  higra==0.6.13
  nibabel==5.4.2
)
ANTLR=antlr4-python3-runtime==4.9.3 # sdist only on PyPI: built here (pure Python)
rm -rf .whl
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d .whl "${PINS[@]}"
python3 -m pip wheel -q --no-deps -w .whl "$ANTLR"
# for the 64 MiB a call carries: drop higra's and nibabel's test suites, test data and C++
# headers, strip the shared libraries' symbols, recompress every wheel with LZMA (a zip method
# Python's zipfile, hence pip, reads: higra 11.1 -> 5.1 MiB) and write RECORD again to match
python3 - .whl/*.whl <<'PY'
import base64, hashlib, os, re, subprocess, sys, tempfile, zipfile
from pathlib import Path

DROP = re.compile(r"^(higra|nibabel)/(.*/)?(tests?|test_data)/|^higra/lib/include/")
for wheel in map(Path, sys.argv[1:]):
    before = wheel.stat().st_size
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(wheel) as zin:
        names = [n for n in zin.namelist() if not DROP.search(n) and not n.endswith("/RECORD")]
        record_name = next(n for n in zin.namelist() if n.endswith(".dist-info/RECORD"))
        rows, out = [], wheel.with_suffix(".tmp")
        with zipfile.ZipFile(out, "w", zipfile.ZIP_LZMA) as zout:
            for name in names:
                data = zin.read(name)
                if ".so" in name.rsplit("/", 1)[-1]:
                    path = Path(tmp) / "lib.so"
                    path.write_bytes(data)
                    subprocess.run(["strip", "--strip-unneeded", str(path)], check=True)
                    data = path.read_bytes()
                digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
                rows.append(f"{name},sha256={digest.decode()},{len(data)}")
                info = zipfile.ZipInfo(name, date_time=zin.getinfo(name).date_time)
                info.external_attr = zin.getinfo(name).external_attr
                info.compress_type = zipfile.ZIP_LZMA
                zout.writestr(info, data)
            zout.writestr(record_name, "\n".join(rows + [f"{record_name},,"]) + "\n")
    os.replace(out, wheel)
    print(f"{wheel.name}: {before / 2**20:.2f} -> {wheel.stat().st_size / 2**20:.2f} MiB")
PY
ls -l .whl
du -sh .whl
