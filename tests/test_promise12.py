"""PROMISE12 in SLC-Net's layout (SSL4MIS h5, slices from 0): the split, the
``+experiment=promise12`` settings, a tiny train -> test -> predict on a synthetic folder in
the published layout, the MetaImage reader, and ``prepare_promise12`` on a tiny fake download."""

from __future__ import annotations

import json
import subprocess
import sys
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from segssl.data.layouts import make_layout
from segssl.data.prepare_promise12 import (
    TEST_CASES,
    TRAIN_CASES,
    VAL_CASES,
    prepare_promise12,
    read_mhd,
)
from segssl.data.readers import DataError
from tests.conftest import compose_config, segssl_env

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "prepare_promise12.py"
# slices per training case of SLC-Net's first 7 patients (its 2/4/7 -> 47/111/191 slices)
SLC_DEPTHS = {48: 24, 35: 23, 4: 46, 25: 18, 23: 20, 15: 20, 8: 40}


def write_h5(path: Path, image: np.ndarray, label: np.ndarray) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=image, compression="gzip")
        f.create_dataset("label", data=label, compression="gzip")


def fake_promise12(root: Path, depths: dict[int, int], val=(31,), test=(9,), size=24) -> Path:
    """SLC-Net's layout: data/slices/CaseNN_slice_K.h5 (K from 0), data/CaseNN.h5, lists."""
    rng = np.random.default_rng(0)
    (root / "data" / "slices").mkdir(parents=True)
    train_slices = []
    volumes = {**depths, **{n: 4 for n in (*val, *test)}}
    for number, depth in volumes.items():
        case = f"Case{number:02d}"
        label = np.zeros((depth, size, size), np.uint8)
        label[:, 8:16, 6:14] = 1
        image = np.clip(rng.normal(0.4, 0.1, label.shape) + 0.4 * label, 0, 1).astype(np.float32)
        write_h5(root / "data" / f"{case}.h5", image, label)
        if number in depths:
            for k in range(depth):
                write_h5(root / "data" / "slices" / f"{case}_slice_{k}.h5", image[k], label[k])
                train_slices.append(f"{case}_slice_{k}")
    (root / "train_slices.list").write_text("".join(f"{s}\n" for s in train_slices))
    (root / "val.list").write_text("".join(f"Case{n:02d}\n" for n in val))
    (root / "test.list").write_text("".join(f"Case{n:02d}\n" for n in test))
    return root


def test_slcnet_split_and_labeled_slice_counts(tmp_path):
    assert len(TRAIN_CASES) == 35 and len(VAL_CASES) == 5 and len(TEST_CASES) == 10
    assert sorted(TRAIN_CASES + VAL_CASES + TEST_CASES) == list(range(50))
    root = fake_promise12(tmp_path, SLC_DEPTHS, size=8)
    layout = make_layout("ssl4mis", root)
    for patients, slices in ((2, 47), (4, 111), (7, 191)):
        labeled, unlabeled = layout.split_labeled(patients)
        assert len(labeled) == slices and len(labeled) + len(unlabeled) == 191
    assert layout.ids("train")[0] == "Case48_slice_0"
    assert layout.path("train", "Case48_slice_0") == root / "data/slices/Case48_slice_0.h5"
    assert layout.path("test", "Case09") == root / "data" / "Case09.h5"


def test_promise12_experiment_settings(tmp_path):
    cfg = compose_config("train", ["+experiment=promise12"], tmp_path / "run")
    assert cfg.experiment_name == "promise12" and cfg.data.layout == "ssl4mis"
    assert cfg.data.num_classes == 2 and list(cfg.data.class_names) == ["prostate"]
    assert (cfg.data.labeled, cfg.data.image_size) == (7, 256)
    assert (cfg.data.batch_size, cfg.data.labeled_batch_size) == (24, 12)
    assert cfg.trainer.max_steps == 30000 and cfg.trainer.val_check_interval == 200
    assert cfg.model._target_ == "monai.networks.nets.BasicUNet"
    assert cfg.method.optimizer.lr == 0.01


def test_tiny_promise12_train_test_predict(run_task, tmp_path):
    root = fake_promise12(tmp_path / "PROMISE12", {48: 3, 35: 3, 4: 3})
    output_dir, _, _ = run_task(
        [
            "+experiment=promise12",
            f"data.root={root}",
            "data.labeled=1",
            "data.image_size=32",
            "data.batch_size=4",
            "data.labeled_batch_size=2",
            "data.num_workers=0",
            "logger=csv",
            "trainer.max_steps=2",
            "trainer.val_check_interval=1",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
        ]
    )
    results = json.loads((output_dir / "results.json").read_text())
    assert results["split"] == "test" and results["config"]["experiment_name"] == "promise12"
    summary = results["models"]["ensemble"]
    assert summary["num_cases"] == 1 and set(summary["per_class"]) == {"prostate"}
    checkpoint = Path(results["checkpoint"])
    assert checkpoint.is_file()

    test_dir, _, _ = run_task([f"ckpt_path={checkpoint}"], task="test", name="t")
    again = json.loads((test_dir / "results.json").read_text())
    assert again["models"]["ensemble"]["num_cases"] == 1

    from segssl.commands.predict import predict_files

    manifest = predict_files(checkpoint, root / "data" / "Case09.h5", tmp_path / "pred")
    [prediction] = manifest["predictions"]
    out = Path(prediction["output"])
    out = out if out.is_absolute() else tmp_path / "pred" / out
    with h5py.File(out) as f:
        labels = f[next(iter(f.keys()))][()]
    assert labels.shape == (4, 24, 24) and set(np.unique(labels)) <= {0, 1}


# -- MetaImage and prepare_promise12 ----------------------------------------------------------
def write_mhd(
    path: Path,
    array: np.ndarray,
    spacing=(0.6, 0.6, 3.6),
    element: str = "MET_SHORT",
    msb: bool = False,
    local: bool = False,
    compressed: bool = False,
) -> None:
    """A MetaImage header + data as the challenge's (array (z, y, x); x fastest on disk)."""
    data = array.astype(array.dtype.newbyteorder(">" if msb else "<")).tobytes()
    if compressed:
        data = zlib.compress(data)
    raw_name = "LOCAL" if local else path.with_suffix(".zraw" if compressed else ".raw").name
    header = (
        "ObjectType = Image\nNDims = 3\nBinaryData = True\n"
        f"BinaryDataByteOrderMSB = {msb}\nCompressedData = {compressed}\n"
        "TransformMatrix = 1 0 0 0 1 0 0 0 1\nOffset = 0 0 0\n"
        f"ElementSpacing = {' '.join(map(str, spacing))}\n"
        f"DimSize = {array.shape[2]} {array.shape[1]} {array.shape[0]}\n"
        f"ElementType = {element}\nElementDataFile = {raw_name}\n"
    )
    if local:
        path.write_bytes(header.encode() + data)
    else:
        path.write_text(header)
        path.with_name(raw_name).write_bytes(data)


@pytest.mark.parametrize(
    ("element", "dtype", "msb", "local", "compressed"),
    [
        ("MET_SHORT", np.int16, False, False, False),
        ("MET_USHORT", np.uint16, True, False, False),
        ("MET_FLOAT", np.float32, False, True, False),
        ("MET_UCHAR", np.uint8, False, False, True),
    ],
)
def test_read_mhd_is_exact(tmp_path, element, dtype, msb, local, compressed):
    array = (np.arange(3 * 4 * 5) * 7 % 200).reshape(3, 4, 5).astype(dtype)
    write_mhd(tmp_path / "a.mhd", array, element=element, msb=msb, local=local,
              compressed=compressed)  # fmt: skip
    got, spacing = read_mhd(tmp_path / "a.mhd")
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    np.testing.assert_array_equal(got, array)
    assert spacing == (3.6, 0.6, 0.6)


def test_read_mhd_errors_name_the_file(tmp_path):
    write_mhd(tmp_path / "a.mhd", np.zeros((2, 3, 4), np.int16))
    (tmp_path / "a.raw").write_bytes(b"\0" * 10)
    with pytest.raises(DataError, match=r"a\.mhd: data holds 10 bytes, expected 48"):
        read_mhd(tmp_path / "a.mhd")
    (tmp_path / "a.raw").unlink()
    with pytest.raises(DataError, match=r"a\.mhd: its data file .*a\.raw is missing"):
        read_mhd(tmp_path / "a.mhd")
    (tmp_path / "b.mhd").write_text("NDims = 3\nDimSize = 1 1 1\nElementType = MET_RGB\n"
                                    "ElementDataFile = b.raw\n")  # fmt: skip
    with pytest.raises(DataError, match=r"b\.mhd: ElementType 'MET_RGB'"):
        read_mhd(tmp_path / "b.mhd")


def write_official_case(folder: Path, number: int, depth: int, labeled: bool = True) -> None:
    rng = np.random.default_rng(number)
    image = rng.integers(0, 900, size=(depth, 12, 10)).astype(np.int16)
    folder.mkdir(parents=True, exist_ok=True)
    write_mhd(folder / f"Case{number:02d}.mhd", image)
    if labeled:
        label = np.zeros(image.shape, np.uint8)
        label[:, 3:7, 2:6] = 1
        write_mhd(folder / f"Case{number:02d}_segmentation.mhd", label, element="MET_UCHAR")


def test_prepare_promise12_builds_the_slcnet_layout(tmp_path):
    raw = tmp_path / "raw"
    write_official_case(raw / "TrainingData_Part1", 48, 3)
    write_official_case(raw / "TrainingData_Part2", 35, 2)
    write_official_case(raw / "TrainingData_Part3", 31, 2)
    write_official_case(raw / "TrainingData_Part3", 9, 2)
    write_official_case(raw / "TestData", 0, 2, labeled=False)  # challenge test: skipped
    counts = prepare_promise12(raw, tmp_path / "P")
    root = tmp_path / "P"
    assert counts == {"train_slices.list": 5, "val.list": 1, "test.list": 1}
    assert (root / "train_slices.list").read_text().split() == [
        "Case48_slice_0", "Case48_slice_1", "Case48_slice_2", "Case35_slice_0", "Case35_slice_1",
    ]  # fmt: skip
    assert (root / "val.list").read_text() == "Case31\n"
    assert (root / "test.list").read_text() == "Case09\n"
    assert not (root / "data" / "Case00.h5").exists()
    assert not (root / "data" / "slices" / "Case31_slice_0.h5").exists()  # val: volume only
    source, _ = read_mhd(raw / "TrainingData_Part1" / "Case48.mhd")
    with h5py.File(root / "data" / "Case48.h5") as f:
        image, label = f["image"][()], f["label"][()]
        np.testing.assert_allclose(f.attrs["spacing"], [3.6, 0.6, 0.6])
    expected = (source - source.min()) / float(source.max() - source.min())
    np.testing.assert_allclose(image, expected, atol=1e-6)
    assert image.dtype == np.float32 and label.dtype == np.uint8 and label.shape == (3, 12, 10)
    for k in range(3):
        with h5py.File(root / "data" / "slices" / f"Case48_slice_{k}.h5") as f:
            np.testing.assert_array_equal(f["image"][()], image[k])
            np.testing.assert_array_equal(f["label"][()], label[k])
    layout = make_layout("ssl4mis", root)
    assert layout.split_labeled(1) == (layout.ids("train")[:3], layout.ids("train")[3:])


def test_prepare_promise12_script_and_errors(tmp_path):
    raw = tmp_path / "raw"
    write_official_case(raw, 48, 2)
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(raw), str(tmp_path / "out"), "--quiet"],
        capture_output=True, text=True, env=segssl_env(), check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "train_slices.list: 2" in done.stdout
    write_mhd(raw / "Case48_segmentation.mhd", np.full((2, 12, 10), 2, np.uint8),
              element="MET_UCHAR")  # fmt: skip
    with pytest.raises(DataError, match=r"Case48_segmentation\.mhd: label values \[2\]"):
        prepare_promise12(raw, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()
    with pytest.raises(DataError, match=r"no CaseNN_segmentation\.mhd"):
        prepare_promise12(tmp_path / "out", tmp_path / "out3")
