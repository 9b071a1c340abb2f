"""The device-call tooling of issue 23: ``scripts/pack_acdc.py`` (a lossless archive of an
SSL4MIS folder small enough to carry), ``scripts/bench_protocol.py`` (the protocol's projected
wall time) and ``scripts/gpu_protocol.sh`` (its CPU smoke path)."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from segssl.data.layouts import SSL4MISLayout
from segssl.data.readers import DataError
from segssl.data.synthetic import ensure_synthetic_dataset
from tests.conftest import REPO, SMALL_SYNTHETIC, segssl_env


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its functions pickle by name for a pack's worker processes
    spec.loader.exec_module(module)
    return module


pack_acdc = load("pack_acdc")


def write_h5(path: Path, attrs: dict | None = None, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
        for key, array in arrays.items():
            f.create_dataset(key, data=array, compression="gzip")


def levels_image(rng: np.random.Generator, shape: tuple[int, ...], scale: int, step: int = 1):
    """An SSL4MIS-style image: integer levels (multiples of ``step``) over ``scale``, float32."""
    levels = rng.integers(0, scale // step + 1, size=shape) * step
    return (levels.astype(np.float64) / scale).astype(np.float32)


@pytest.fixture
def ssl4mis_folder(tmp_path: Path) -> Path:
    """Slices of 8-bit and 12-bit scales, one with only even levels, one not of levels at
    all, a volume with an attribute, and the list files."""
    rng = np.random.default_rng(0)
    root = tmp_path / "src"
    label = rng.integers(0, 4, size=(20, 24)).astype(np.uint8)
    images = {
        "patient001_frame01_slice_1": levels_image(rng, (20, 24), 251),
        "patient001_frame01_slice_2": levels_image(rng, (20, 24), 3049),
        "patient002_frame01_slice_1": levels_image(rng, (20, 24), 250, step=2),
        "patient002_frame01_slice_2": rng.random((20, 24), dtype=np.float32),  # not levels
    }
    for name, image in images.items():
        write_h5(root / "data" / "slices" / f"{name}.h5", image=image, label=label)
    volume = levels_image(rng, (3, 20, 24), 199)
    labels = rng.integers(0, 4, size=(3, 20, 24)).astype(np.uint8)
    spacing = {"spacing": np.array([10.0, 1.5, 1.5])}
    write_h5(root / "data" / "patient003_frame01.h5", spacing, image=volume, label=labels)
    (root / "train_slices.list").write_text("\n".join(images) + "\n")
    (root / "val.list").write_text("patient003_frame01\n")
    (root / "all_slices.list").write_text("anything\n")
    return root


def test_find_levels_recovers_integer_levels_exactly() -> None:
    rng = np.random.default_rng(1)
    for scale, step in ((251, 1), (3049, 1), (250, 2), (255, 3)):
        image = levels_image(rng, (16, 16), scale, step)
        levels, found = pack_acdc.find_levels(image)
        assert pack_acdc.from_levels(levels, found).tobytes() == image.tobytes()
    assert pack_acdc.find_levels(rng.random((16, 16), dtype=np.float32)) is None
    assert pack_acdc.find_levels(-levels_image(rng, (4, 4), 10)) is None


def test_pack_and_unpack_give_back_every_file_bit_for_bit(
    ssl4mis_folder: Path, tmp_path: Path, capsys
) -> None:
    archive = tmp_path / "packed.h5"
    pack_acdc.pack(ssl4mis_folder, archive, workers=1)
    assert "1 image(s) not integer levels" in capsys.readouterr().out
    dest = tmp_path / "out"
    assert pack_acdc.unpack(archive, dest, workers=2) == 5
    for source in ssl4mis_folder.rglob("*.h5"):
        with h5py.File(source) as a, h5py.File(dest / source.relative_to(ssl4mis_folder)) as b:
            assert sorted(a) == sorted(b)
            for key in a:
                assert a[key].dtype == b[key].dtype
                assert a[key][()].tobytes() == b[key][()].tobytes()
            assert {k: a.attrs[k].tolist() for k in a.attrs} == {
                k: b.attrs[k].tolist() for k in b.attrs
            }
    for name in ("train_slices.list", "val.list", "all_slices.list"):
        assert (dest / name).read_bytes() == (ssl4mis_folder / name).read_bytes()
    # the unpacked folder is an SSL4MIS root as it stands
    layout = SSL4MISLayout(dest)
    sample = layout.load("val", "patient003_frame01", num_classes=4, require_label=True)
    assert sample.image.dtype == np.float32 and sample.spacing == (10.0, 1.5, 1.5)


def test_unpack_refuses_a_damaged_archive(ssl4mis_folder: Path, tmp_path: Path) -> None:
    archive = tmp_path / "packed.h5"
    pack_acdc.pack(ssl4mis_folder, archive, workers=1)
    with h5py.File(archive, "a") as f:
        index = json.loads(f["index"][()].tobytes())
        meta = index["files"][0]["arrays"]["image"]
        blobs = f["blobs"]
        blobs[meta["offset"] + meta["length"] // 2] ^= 0xFF  # one byte inside an image's blob
    with pytest.raises(DataError, match="patient001_frame01_slice_1.h5/image"):
        pack_acdc.unpack(archive, tmp_path / "out")
    with pytest.raises(DataError, match="archive not found"):
        pack_acdc.unpack(tmp_path / "absent.h5", tmp_path / "out2")


def test_pack_names_a_file_the_lists_miss(ssl4mis_folder: Path, tmp_path: Path) -> None:
    (ssl4mis_folder / "data" / "patient003_frame01.h5").unlink()
    with pytest.raises(DataError, match="val.list names 1 missing file"):
        pack_acdc.pack(ssl4mis_folder, tmp_path / "packed.h5", workers=1)


def test_bench_protocol_quick_prints_parts_and_projections() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_protocol.py"), "--quick"],
        env=segssl_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    values = {}
    for text in lines:
        match = re.match(r"^(\w+) (-?[\d.]+)(?: (ms|fraction))?(?:  #.*)?$", text)
        if match:
            values[match.group(1)] = float(match.group(2))
    for part in (
        "data_loader_onfly_ms_per_sample",
        "data_loader_cache_ms_per_sample",
        "data_device_ms_per_batch",
        "val_dice_ms",
        "val_distances_ms",
        "checkpoint_write_ms",
        "gpu_step_ms",
    ):
        assert values[part] > 0, part
    assert lines[-2].startswith("projected_minutes_before ")
    assert lines[-1].startswith("projected_minutes ")
    before, now = float(lines[-2].split()[1]), float(lines[-1].split()[1])
    # 30000 steps at the assumed 15 ms are 7.5 minutes of GPU time alone
    assert before >= 7.5 and now >= 7.5
    assert values["gpu_step_ms"] == 15.0


@pytest.mark.slow
def test_gpu_protocol_smoke_runs_on_cpu(tmp_path: Path) -> None:
    """SEGSSL_GPU_SMOKE=1: the device script's whole path (unpack, train on the device-batch
    path, test, summary) on CPU, with no nvidia-smi and no wheels."""
    source = ensure_synthetic_dataset(tmp_path / "synthetic", **SMALL_SYNTHETIC)
    archive = tmp_path / "packed.h5"
    pack_acdc.pack(source, archive, workers=1)
    out = tmp_path / "out"
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_protocol.sh")],
        env=segssl_env(
            SEGSSL_GPU_SMOKE="1",
            SEGSSL_GPU_ARCHIVE=str(archive),
            SEGSSL_GPU_WORK=str(tmp_path / "work"),
            OUT=str(out),
        ),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = (out / "summary.txt").read_text()
    assert "unpacked" in summary and "(exact: every array" in summary
    assert "training command exit 0" in summary
    assert "steps_done 4" in summary
    assert re.search(r"test split=test model=\w+ .*'dice': ", summary)
    assert (out / "metrics.csv").is_file() and (out / "results.json").is_file()
    phases = json.loads((out / "phases.json").read_text())
    assert phases["step"] == 4 and phases["validations"] == 2
    assert 0 < phases["validation_share"] < 1
    assert "validation_share " in summary
    assert not (out / "gpu_util.csv").exists()
