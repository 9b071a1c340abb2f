"""Pancreas-CT in MC-Net's h5 layout (DSAIF-SEMI's protocol): the layout options, the
``+experiment=pancreas`` settings, a tiny train -> test -> predict on a synthetic folder in
the published layout (names, keys, float32 labels), and ``prepare_pancreas`` on a tiny fake
NIH download."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

from segssl.data.layouts import make_layout
from segssl.data.prepare_pancreas import (
    TEST_CASES,
    TRAIN_CASES,
    crop_box,
    prepare_pancreas,
    resampled_shape,
)
from segssl.data.readers import DataError
from tests.conftest import compose_config, segssl_env

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "prepare_pancreas.py"
OPTIONS = {"image_dir": "Pancreas_h5", "file_pattern": "{id}_norm.h5"}
# DSAIF-SEMI partitions/Pancreas_CT/1_5/labeled.list and 1_10/labeled.list
DSAIF_1_5 = [
    "image0057", "image0018", "image0062", "image0031", "image0020", "image0017",
    "image0032", "image0079", "image0061", "image0064", "image0070", "image0019",
]  # fmt: skip
DSAIF_1_10 = DSAIF_1_5[:6]


def fake_pancreas(root: Path, train: int = 3, test: int = 1, shape=(20, 18, 16)) -> Path:
    """MC-Net's layout with its dtypes: image float32 (z-scored), label float32 0/1."""
    rng = np.random.default_rng(0)
    train_ids = [f"image{n:04d}" for n in TRAIN_CASES[:train]]
    test_ids = [f"image{n:04d}" for n in TEST_CASES[:test]]
    (root / "Pancreas_h5").mkdir(parents=True)
    for case in train_ids + test_ids:
        label = np.zeros(shape, np.float32)
        label[6:14, 5:12, 4:12] = 1.0
        image = (rng.normal(size=shape) + 2 * label).astype(np.float32)
        with h5py.File(root / "Pancreas_h5" / f"{case}_norm.h5", "w") as f:
            f.create_dataset("image", data=image, compression="gzip")
            f.create_dataset("label", data=label, compression="gzip")
    (root / "train.list").write_text("".join(f"{c}\n" for c in train_ids))
    (root / "test.list").write_text("".join(f"{c}\n" for c in test_ids))
    return root


def test_train_list_prefixes_are_dsaif_partitions():
    """MC-Net's train.list order: the first 12 / 6 cases are DSAIF-SEMI's 1_5 / 1_10."""
    ids = [f"image{n:04d}" for n in TRAIN_CASES]
    assert len(ids) == 62 and len(set(ids)) == 62 and len(TEST_CASES) == 20
    assert ids[:12] == DSAIF_1_5 and ids[:6] == DSAIF_1_10
    assert not set(TRAIN_CASES) & set(TEST_CASES)
    assert set(TRAIN_CASES) | set(TEST_CASES) == set(range(1, 83))


def test_pancreas_layout_reads_mcnet_names_and_float_labels(tmp_path):
    root = fake_pancreas(tmp_path)
    layout = make_layout("uamt", root, **OPTIONS)
    assert layout.path("train", "image0057") == root / "Pancreas_h5" / "image0057_norm.h5"
    assert layout.split_labeled(1) == (["image0057"], ["image0018", "image0062"])
    sample = layout.load("train", "image0018", num_classes=2, require_label=True)
    assert sample.label.dtype == np.uint8 and set(np.unique(sample.label)) == {0, 1}
    assert sample.image.dtype == np.float32 and sample.case == "image0018"
    # LA's names stay the default
    la = make_layout("uamt", root)
    assert la.path("train", "X") == root / "2018LA_Seg_Training Set" / "X" / "mri_norm2.h5"


def test_pancreas_layout_errors_name_the_setting_or_file(tmp_path):
    root = fake_pancreas(tmp_path)
    with h5py.File(root / "Pancreas_h5" / "image0062_norm.h5", "a") as f:
        f["label"][0, 0, 0] = 0.5
    layout = make_layout("uamt", root, **OPTIONS)
    with pytest.raises(DataError, match=r"image0062_norm\.h5: 'label' \(float32\).*whole"):
        layout.load("train", "image0062", num_classes=2, require_label=True)
    with pytest.raises(DataError, match=r"file_pattern='norm\.h5'.*'\{id\}'"):
        make_layout("uamt", root, image_dir="Pancreas_h5", file_pattern="norm.h5")
    with pytest.raises(DataError, match=r"image_dir='\.\./x'"):
        make_layout("uamt", root, image_dir="../x")
    (root / "Pancreas_h5" / "image0018_norm.h5").unlink()
    with pytest.raises(DataError, match=r"train\.list names 1 missing.*image0018_norm\.h5"):
        layout.check_files("train")


def test_pancreas_experiment_is_dsaif_protocol(tmp_path):
    cfg = compose_config("train", ["+experiment=pancreas"], tmp_path / "run")
    assert cfg.experiment_name == "pancreas" and cfg.trainer.max_steps == 15000
    assert list(cfg.data.patch_size) == [96, 96, 96] and cfg.data.labeled == 12
    assert (cfg.data.batch_size, cfg.data.labeled_batch_size) == (4, 2)
    assert cfg.data.augment is False  # DSAIF-SEMI: RandomCrop only
    assert dict(cfg.data.layout_options) == {**OPTIONS, "val_cases": 0, "spacing": [1.0] * 3}
    assert cfg.model._target_.endswith("VNet") and cfg.model.features == 16
    assert cfg.method.optimizer.lr == 0.01 and cfg.filter.area_threshold == 50
    assert cfg.filter.rotate_view_2 is True  # DSAIF-SEMI rotates view 2 for Pancreas too
    assert list(cfg.evaluation.stride) == [16, 16, 16] and cfg.evaluation.mode == "sliding_window"
    assert cfg.method._target_.endswith("CrossPseudoSupervision")


def test_tiny_pancreas_train_test_predict(run_task, tmp_path):
    root = fake_pancreas(tmp_path / "Pancreas", train=4)
    tiny = [
        "+experiment=pancreas",
        f"data.root={root}",
        "data.labeled=2",
        "data.num_workers=0",
        "data.patch_size=[16,16,16]",
        "evaluation.stride=[16,16,16]",
        "model.features=4",
        "logger=csv",
        "trainer.max_steps=2",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
    ]
    output_dir, _, cfg = run_task(tiny)
    results = json.loads((output_dir / "results.json").read_text())
    assert results["split"] == "test" and results["config"]["experiment_name"] == "pancreas"
    assert results["protocol"]["inference"] == "sliding-window"
    assert results["protocol"]["distance_units"] == "mm"
    summary = results["models"]["ensemble"]
    assert summary["num_cases"] == 1 and set(summary["per_class"]) == {"pancreas"}
    checkpoint = Path(results["checkpoint"])
    assert checkpoint.name == "last.ckpt" and checkpoint.is_file()

    test_dir, _, _ = run_task([f"ckpt_path={checkpoint}"], task="test", name="t")
    again = json.loads((test_dir / "results.json").read_text())
    assert again["models"]["ensemble"]["num_cases"] == 1

    from segssl.commands.predict import predict_files

    case = root / "Pancreas_h5" / f"image{TEST_CASES[0]:04d}_norm.h5"
    manifest = predict_files(checkpoint, case, tmp_path / "pred")
    [prediction] = manifest["predictions"]
    out = Path(prediction["output"])
    out = out if out.is_absolute() else tmp_path / "pred" / out
    with h5py.File(out) as f:
        labels = f[next(iter(f.keys()))][()]
    assert labels.shape == (20, 18, 16) and set(np.unique(labels)) <= {0, 1}


# -- prepare_pancreas -------------------------------------------------------------------------
def test_crop_box_is_mcnets_rule():
    """Box widened to 96 voxels (half the shortfall each side) plus 25, clamped; z untouched."""
    label = np.zeros((250, 260, 4), np.uint8)
    label[100:131, 50:170, 1:3] = 1  # x extent 30 (<96), y extent 119 (>=96)
    assert crop_box(label) == (100 - 33 - 25, 130 + 33 + 25, 50 - 25, 169 + 25)
    assert crop_box(label, margin=0) == (67, 163, 50, 169)
    label[:] = 0
    label[0:5, 255:260, 0] = 1  # at the border: clamped
    assert crop_box(label) == (0, 4 + 46 + 25, 255 - 46 - 25, 260)
    assert resampled_shape((512, 512, 200), (0.7, 0.7, 1.5)) == (358, 358, 300)


def write_nih_case(raw: Path, number: int, flip_image_x: bool = False) -> None:
    """A tiny NIH-style case: HU image (PANCREAS_NNNN.nii.gz) and label (labelNNNN.nii.gz)."""
    shape, zooms = (30, 28, 6), (0.8, 0.8, 2.0)
    rng = np.random.default_rng(0)  # the same content for every case
    label = np.zeros(shape, np.uint8)
    label[10:16, 8:14, 2:4] = 1
    image = rng.uniform(-1000, 1000, size=shape).astype(np.int16)
    image[label == 1] = 40
    image[:3] = 2000  # beyond the window: clipped to 275 HU
    affine = np.diag([*zooms, 1.0])
    (raw / "labels").mkdir(parents=True, exist_ok=True)
    (raw / "images" / "sub").mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(label, affine), raw / "labels" / f"label{number:04d}.nii.gz")
    if flip_image_x:  # stored the other way along x: the affine says so
        image = image[::-1]
        affine = affine.copy()
        affine[0, 0] = -zooms[0]
    nib.save(
        nib.Nifti1Image(image, affine), raw / "images" / "sub" / f"PANCREAS_{number:04d}.nii.gz"
    )


def test_prepare_pancreas_builds_the_mcnet_layout(tmp_path):
    raw = tmp_path / "raw"
    write_nih_case(raw, 57)
    write_nih_case(raw, 18, flip_image_x=True)
    write_nih_case(raw, 50)
    counts = prepare_pancreas(raw, tmp_path / "Pancreas")
    root = tmp_path / "Pancreas"
    assert counts == {"train.list": 2, "test.list": 1}
    assert (root / "train.list").read_text() == "image0057\nimage0018\n"  # MC-Net's order
    assert (root / "test.list").read_text() == "image0050\n"
    for case in ("image0057", "image0018", "image0050"):
        with h5py.File(root / "Pancreas_h5" / f"{case}_norm.h5") as f:
            image, label = f["image"][()], f["label"][()]
            np.testing.assert_allclose(f.attrs["spacing"], [1.0, 1.0, 1.0])
        # 1 mm (floor rule): (24, 22, 12); the tiny volume is narrower than the crop: whole
        assert image.shape == label.shape == (24, 22, 12)
        assert image.dtype == np.float32 and label.dtype == np.uint8
        assert abs(float(image.mean())) < 1e-4 and abs(float(image.std()) - 1) < 1e-3
        assert set(np.unique(label)) == {0, 1}
        assert image[0].max() == image.max()  # the 2000 HU rows are clipped to the top
    with (
        h5py.File(root / "Pancreas_h5" / "image0057_norm.h5") as a,
        h5py.File(root / "Pancreas_h5" / "image0018_norm.h5") as b,
    ):  # the flipped image is put back on the label's grid
        np.testing.assert_array_equal(a["label"][()], b["label"][()])
        np.testing.assert_array_equal(a["image"][()], b["image"][()])
    layout = make_layout("uamt", root, **OPTIONS)
    assert layout.split_labeled(1) == (["image0057"], ["image0018"])
    layout.load("test", "image0050", num_classes=2, require_label=True)


def test_prepare_pancreas_script_and_errors(tmp_path):
    raw = tmp_path / "raw"
    write_nih_case(raw, 57)
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(raw), str(tmp_path / "out"), "--quiet"],
        capture_output=True, text=True, env=segssl_env(), check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "train.list: 1" in done.stdout
    again = subprocess.run(
        [sys.executable, str(SCRIPT), str(raw), str(tmp_path / "out")],
        capture_output=True, text=True, env=segssl_env(), check=False,
    )  # fmt: skip
    assert again.returncode == 1 and "not empty; pass --overwrite" in again.stderr
    (raw / "labels" / "label0099.nii.gz").write_bytes(
        (raw / "labels" / "label0057.nii.gz").read_bytes()
    )
    with pytest.raises(DataError, match=r"no image for labels of cases \[99\].*DICOM"):
        prepare_pancreas(raw, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()
