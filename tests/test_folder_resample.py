"""``data=folder`` options the planner writes: ``target_spacing`` (every case resampled, image
linear and label nearest, cached like any other case, undone by ``predict``) and ``normalize:
ct`` with the dataset's ``intensity`` numbers."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from segssl.commands.predict import model_predict_fn, predict_files
from segssl.data import resample
from segssl.data.image_io import InputProtocol
from segssl.data.layouts import make_layout
from segssl.data.readers import DataError
from segssl.evaluation.inference import probs_to_labels
from segssl.methods.from_checkpoint import build_method, read_checkpoint
from tests.test_folder_data import folder_run, write_nifti

SPACING = (0.8, 1.0, 3.0)  # anisotropic, as CT: thick slices along z
SHAPE = (16, 16, 6)
TARGET = (1.0, 1.0, 1.5)
RESAMPLED = (13, 16, 12)  # round(16 * 0.8 / 1.0), 16 (already 1.0), 6 * 3.0 / 1.5
INTENSITY = {"low": 90.0, "high": 180.0, "mean": 130.0, "std": 25.0}
# class 1: a box; class 2: a smaller box inside it (voxel index ranges, inclusive)
BOX1 = ((3, 12), (4, 11), (1, 4))
BOX2 = ((6, 9), (6, 9), (2, 3))


def make_cases(root: Path, shape=SHAPE, spacing=SPACING) -> Path:
    """Three cases (c0, c1 train; c2 val): boxes of classes 1 and 2 on noise, raw CT-like
    intensities around 100 (background), 150 and 200, so clipping at 90/180 bites."""
    rng = np.random.default_rng(0)
    for case in ("c0", "c1", "c2"):
        label = np.zeros(shape, np.uint8)
        for value, box in ((1, BOX1), (2, BOX2)):
            label[tuple(slice(lo, hi + 1) for lo, hi in box[: len(shape)])] = value
        image = 100 + 50 * label + 20 * rng.normal(size=shape)
        write_nifti(root / "imagesTr" / f"{case}.nii.gz", image.astype(np.float32), spacing)
        write_nifti(root / "labelsTr" / f"{case}.nii.gz", label, spacing)
    (root / "train.list").write_text("c0\nc1\n")
    (root / "val.list").write_text("c2\n")
    return root


@pytest.fixture
def cases(tmp_path: Path) -> Path:
    return make_cases(tmp_path / "ct")


def mm_extent(label: np.ndarray, value: int, spacing) -> np.ndarray:
    """Per axis, the [start, end) in mm the voxels of ``value`` cover."""
    where = np.argwhere(label == value)
    return np.stack([where.min(0), where.max(0) + 1]).T * np.asarray(spacing)[:, None]


# -- resampling -----------------------------------------------------------------------------
def test_resampled_case_has_the_target_grid_and_keeps_labels_and_extent(cases):
    lay = make_layout("folder", cases, dims=3, target_spacing=list(TARGET), workers=1)
    volume = lay.load("val", "c2", num_classes=3, require_label=True)
    assert volume.image.shape == RESAMPLED and volume.label.shape == RESAMPLED
    assert volume.spacing == pytest.approx(TARGET)
    assert volume.image.dtype == np.float32 and volume.label.dtype == np.uint8
    assert set(np.unique(volume.label)) == {0, 1, 2}  # nearest: no new label values
    source = np.asarray(nib.load(cases / "labelsTr" / "c2.nii.gz").dataobj)
    # the field of view is kept: effective spacing = original extent / new size
    effective = np.array(SHAPE) * np.array(SPACING) / np.array(RESAMPLED)
    for value in (1, 2):
        np.testing.assert_allclose(
            mm_extent(volume.label, value, effective),
            mm_extent(source, value, SPACING),
            atol=max(TARGET) / 2 + 1e-6,  # a boundary moves by at most half a new voxel
        )
    # 2-D training: slices along z of the resampled volume
    assert len(make_layout("folder", cases, target_spacing=list(TARGET)).ids("train")) == 2 * 12


def test_resampling_rules_per_axis():
    image = np.random.default_rng(1).normal(size=(10, 8, 1)).astype(np.float32)
    # an axis at the target within 1e-3 and a one-voxel axis are untouched; shape rounds
    out, spacing = resample.resample(image, (2.0, 1.0005, 4.0), (0.8, 1.0, 1.0), "linear")
    assert out.shape == (25, 8, 1) and spacing == (0.8, 1.0005, 4.0)
    same, _ = resample.resample(image, (1.0, 1.0, 1.0), (1.0005, 0.9995, 2.0), "linear")
    assert same is image
    assert resample.target_shape((3, 5, 7), (0.1, 1.0, 1.0), (1.0, 1.0, 1.0)) == (1, 5, 7)
    labels = np.array([0, 3, 3, 7], np.int64)
    up = resample.resize(labels, (8,), "nearest")
    assert up.dtype == np.int64 and up.tolist() == [0, 0, 3, 3, 3, 3, 7, 7]
    assert resample.resize(up, (4,), "nearest").tolist() == labels.tolist()
    for bad in ([1.0, 1.0], [1.0, 0.0, 1.0], "1,1,1", [True, 1.0, 1.0]):
        with pytest.raises(DataError, match=r"data\.layout_options\.target_spacing=.*three"):
            resample.check_target_spacing(bad)


def test_2d_images_keep_their_one_slice(tmp_path):
    root = make_cases(tmp_path / "flat", shape=(16, 12), spacing=(0.5, 1.25))
    lay = make_layout("folder", root, target_spacing=[1.0, 1.25, 2.0], cache=False)
    assert lay.ids("train") == ["c0_slice_0", "c1_slice_0"]
    volume = lay.load("val", "c2", num_classes=3, require_label=True)
    assert volume.image.shape == (1, 8, 12)  # slice axis first; x halved, y at the target
    assert volume.spacing == pytest.approx((1.0, 1.0, 1.25))  # the slice keeps its 1.0


def test_resampled_cases_round_trip_through_the_cache(cases):
    options = {"target_spacing": list(TARGET), "normalize": "ct", "intensity": INTENSITY}
    cached = make_layout("folder", cases, workers=1, **options)
    decoded = make_layout("folder", cases, cache=False, **options)
    assert cached.ids("train") == decoded.ids("train")
    for split, item in [("train", "c0_slice_0"), ("train", "c1_slice_11"), ("val", "c2")]:
        a = cached.load(split, item, num_classes=3, require_label=True)
        b = decoded.load(split, item, num_classes=3, require_label=True)
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.label, b.label)
        assert a.spacing == b.spacing
    assert a.image.shape == (12, 13, 16)  # val volume, slice axis first
    # the options key the cache; default settings keep the key (and entries) they had
    assert cached._store.options["target_spacing"] == list(TARGET)
    assert cached._store.options["intensity"] == INTENSITY
    plain = make_layout("folder", cases, workers=1)
    assert plain._store.options == {"slice_axis": 2, "normalize": "zscore", "axes": [2, 0, 1]}
    assert plain._job("c0").key != cached._job("c0").key
    assert plain.load("val", "c2", num_classes=3, require_label=True).image.shape == (6, 16, 16)


# -- ct normalisation -----------------------------------------------------------------------
def test_ct_normalisation_clips_and_zscores_with_the_given_numbers(cases):
    lay = make_layout("folder", cases, dims=3, normalize="ct", intensity=INTENSITY, cache=False)
    image = lay.load("val", "c2", num_classes=3, require_label=True).image
    raw = np.asarray(nib.load(cases / "imagesTr" / "c2.nii.gz").get_fdata(), np.float64)
    assert raw.min() < 90 and raw.max() > 180  # both clips bite
    expected = (np.clip(raw, 90.0, 180.0) - 130.0) / 25.0
    np.testing.assert_allclose(image, expected, rtol=1e-6, atol=1e-6)
    assert image.min() == pytest.approx(-1.6) and image.max() == pytest.approx(2.0)


def test_ct_without_complete_intensity_names_the_setting(cases):
    key = r"data\.layout_options\.intensity"
    with pytest.raises(DataError, match=rf"{key}=null but normalize=ct: expected \{{low"):
        make_layout("folder", cases, normalize="ct")
    bad = [
        {"low": 1.0, "high": 2.0, "mean": 0.0},  # incomplete
        {**INTENSITY, "std": 0.0},
        {**INTENSITY, "low": 200.0},  # low > high
        {**INTENSITY, "mean": "x"},
    ]
    for intensity in bad:
        with pytest.raises(DataError, match=rf"{key}=.*std > 0"):
            make_layout("folder", cases, normalize="ct", intensity=intensity)
    with pytest.raises(DataError, match=rf"{key}=null but normalize=ct"):
        InputProtocol(dims=2, normalize="ct", h5_normalize="ct", nifti_axes=(2, 0, 1))


# -- end to end: train with both options, predict on an anisotropic input -------------------
def test_trained_run_predicts_masks_on_the_inputs_own_grid(run_task, cases, tmp_path):
    overrides = [
        "method=supervised",
        "model.features=[4,4,8,8,16,4]",
        "data.num_classes=3",
        "data.class_names=[outer,inner]",
        f"data.layout_options.target_spacing=[{','.join(map(str, TARGET))}]",
        "data.layout_options.normalize=ct",
        "data.layout_options.intensity={low:90,high:180,mean:130,std:25}",
    ]
    output_dir, _, _ = run_task(folder_run(cases, *overrides))
    results = json.loads((output_dir / "results.json").read_text())
    assert results["config"]["data"]["layout_options"]["target_spacing"] == list(TARGET)
    checkpoint = output_dir / "checkpoints" / "last.ckpt"

    volume = (100 + 40 * np.random.default_rng(3).normal(size=(20, 16, 5))).astype(np.float32)
    affine = np.diag([0.8, 1.0, 3.0, 1.0])
    affine[:3, 3] = [5, -3, 2]
    image = nib.Nifti1Image(volume, affine)
    image.header.set_sform(affine, code=2)
    nib.save(image, tmp_path / "scan.nii.gz")

    manifest = predict_files(checkpoint, tmp_path / "scan.nii.gz", tmp_path / "out")

    out = nib.load(tmp_path / "out" / "scan.nii.gz")
    labels = np.asarray(out.dataobj)
    assert labels.shape == volume.shape and labels.dtype == np.uint8
    np.testing.assert_allclose(out.affine, affine)
    assert out.header.get_zooms() == image.header.get_zooms()
    protocol = manifest["input_protocol"]
    assert protocol["target_spacing"] == list(TARGET) and protocol["intensity"] == INTENSITY
    assert protocol["normalize"] == "ct"
    # the model saw the input at the target spacing: (20*0.8, 16, 5*3/1.5) with z first
    assert manifest["predictions"][0]["model_shape"] == [10, 16, 16]
    # and its labels, brought back by nearest neighbour, are what was written
    method = build_method(read_checkpoint(checkpoint)).eval()
    on_grid = resample.resize(volume, (16, 16, 10), "linear")
    normalised = ((np.clip(on_grid, 90, 180) - 130.0) / 25.0).astype(np.float32)
    _, fn = model_predict_fn(method, None)
    probs = method.evaluator.predict(fn, normalised.transpose(2, 0, 1), torch.device("cpu"))
    direct = probs_to_labels(probs, method.evaluator.threshold).transpose(1, 2, 0)
    np.testing.assert_array_equal(labels, resample.resize(direct, volume.shape, "nearest"))
