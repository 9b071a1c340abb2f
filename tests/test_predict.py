"""``segssl predict``: label masks for NIfTI, h5 and PNG files from a checkpoint alone, in the
input's own axis order and geometry, normalised as the training data; no silent overwrite."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from segssl.commands.predict import model_predict_fn, predict_files
from segssl.data.readers import DataError
from segssl.evaluation.inference import probs_to_labels
from segssl.methods import CrossPseudoSupervision
from segssl.runs.settings_check import SettingsError
from tests.conftest import TINY, compose_config, save_as_lightning


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_data_dir: Path) -> Path:
    """A tiny trained CPS checkpoint whose stored data paths point nowhere (another machine)."""
    from segssl.commands.train import train

    run = tmp_path_factory.mktemp("train") / "run"
    small = ["method=cps", "test=false", "logger=none", "model.features=[4,4,8,8,16,4]"]
    train(compose_config("train", [*TINY, *small, "trainer.max_steps=2"], run, tiny_data_dir))
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    state["segssl_config"]["data"]["root"] = "/elsewhere/ACDC"
    state["segssl_config"]["paths"] = {"data_dir": "/elsewhere"}
    moved = tmp_path_factory.mktemp("moved") / "model.ckpt"
    torch.save(state, moved)
    return moved


@pytest.fixture(scope="module")
def method(checkpoint: Path) -> CrossPseudoSupervision:
    return CrossPseudoSupervision.load_from_checkpoint(checkpoint, map_location="cpu").eval()


def expected_labels(method, volume: np.ndarray, model: str | None = None) -> np.ndarray:
    """The model's labels of a (D, H, W) volume, computed directly."""
    _, fn = model_predict_fn(method, model)
    probs = method.evaluator.predict(fn, volume, torch.device("cpu"))
    return probs_to_labels(probs, method.evaluator.threshold)


def minmax(array: np.ndarray) -> np.ndarray:
    a = array.astype(np.float64)
    return ((a - a.min()) / (a.max() - a.min())).astype(np.float32)


def test_nifti_volume_keeps_its_geometry_and_is_sliced_along_z(checkpoint, method, tmp_path):
    rng = np.random.default_rng(0)
    volume = (200 + 50 * rng.normal(size=(40, 36, 5))).astype(np.float32)  # (x, y, z), raw MRI
    affine = np.array([[0, -1.5, 0, 10], [1.25, 0, 0, -4], [0, 0, 3.0, 2], [0, 0, 0, 1]])
    image = nib.Nifti1Image(volume, affine)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=2)
    nib.save(image, tmp_path / "case1.nii.gz")

    manifest = predict_files(checkpoint, tmp_path / "case1.nii.gz", tmp_path / "out")

    out = nib.load(tmp_path / "out" / "case1.nii.gz")  # named like its input
    labels = np.asarray(out.dataobj)
    assert labels.shape == volume.shape and labels.dtype == np.uint8
    assert labels.max() < 4
    np.testing.assert_allclose(out.affine, affine)
    assert int(out.header["sform_code"]) == 2 and int(out.header["qform_code"]) == 1
    assert out.header.get_zooms() == image.header.get_zooms()
    # min-max normalised, NIfTI (x, y, z) read as (z, y, x) like prepare_acdc, written back
    direct = expected_labels(method, minmax(volume).transpose(2, 1, 0))
    np.testing.assert_array_equal(labels, direct.transpose(2, 1, 0))
    assert manifest["model"] == "ensemble"  # the selection model of CPS
    assert manifest["input_protocol"] == {
        "dims": 2, "normalize": "minmax", "h5_normalize": "none", "nifti_axes": [2, 1, 0],
    }  # fmt: skip
    stored = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert stored["checkpoint"] == str(checkpoint.resolve())
    assert [p["output"] for p in stored["predictions"]] == [
        str((tmp_path / "out" / "case1.nii.gz").resolve())
    ]


def test_folder_of_h5_and_png_with_a_chosen_network(checkpoint, method, tmp_path):
    rng = np.random.default_rng(1)
    inputs = tmp_path / "in"
    inputs.mkdir()
    h5_image = rng.uniform(size=(3, 32, 30)).astype(np.float32)  # SSL4MIS volume, normalised
    with h5py.File(inputs / "patient9_frame01.h5", "w") as f:
        f["image"] = h5_image
    png = rng.integers(0, 255, size=(30, 28), dtype=np.uint8)
    Image.fromarray(png).save(inputs / "slice.png")
    (inputs / "notes.txt").write_text("not an image")

    manifest = predict_files(checkpoint, inputs, tmp_path / "out", model="net1")

    with h5py.File(tmp_path / "out" / "patient9_frame01.h5") as f:
        h5_labels = f["label"][()]
    assert h5_labels.shape == (3, 32, 30) and h5_labels.dtype == np.uint8
    np.testing.assert_array_equal(h5_labels, expected_labels(method, h5_image, "net1"))
    png_labels = np.asarray(Image.open(tmp_path / "out" / "slice.png"))
    assert png_labels.shape == (30, 28) and png_labels.dtype == np.uint8
    np.testing.assert_array_equal(png_labels, expected_labels(method, minmax(png)[None], "net1")[0])
    assert manifest["model"] == "net1"
    assert [(p["format"], p["normalize"]) for p in manifest["predictions"]] == [
        ("h5", "none"),
        ("png", "minmax"),
    ]


def test_refuses_to_overwrite_and_names_the_files(checkpoint, tmp_path):
    png = np.arange(24 * 20, dtype=np.uint8).reshape(24, 20)
    Image.fromarray(png).save(tmp_path / "a.png")
    out = tmp_path / "out"
    predict_files(checkpoint, tmp_path / "a.png", out)
    (out / "a.png").write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match=r"a\.png.*predictions\.json.*overwrite=true"):
        predict_files(checkpoint, tmp_path / "a.png", out)
    assert (out / "a.png").read_bytes() == b"keep me"
    predict_files(checkpoint, tmp_path / "a.png", out, overwrite=True)
    assert np.asarray(Image.open(out / "a.png")).shape == (24, 20)


def test_bad_requests_fail_clearly(checkpoint, tmp_path):
    (tmp_path / "scan.mha").write_text("?")
    with pytest.raises(DataError, match=r"scan\.mha: unsupported file type"):
        predict_files(checkpoint, tmp_path / "scan.mha", tmp_path / "out")
    with pytest.raises(DataError, match="no such file or folder"):
        predict_files(checkpoint, tmp_path / "missing.nii.gz", tmp_path / "out")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(ValueError, match=r"model_name='net'.*\['ensemble', 'net1', 'net2'\]"):
        predict_files(checkpoint, tmp_path / "a.png", tmp_path / "out", model="net")
    with pytest.raises(DataError, match=r"a\.png: constant image"):
        predict_files(checkpoint, tmp_path / "a.png", tmp_path / "out")
    assert not (tmp_path / "out" / "predictions.json").exists()


def test_3d_model_reads_nifti_axes_as_they_are_and_zscores(tmp_path):
    """An LA-protocol (UA-MT) VNet checkpoint: sliding windows, z-scored NIfTI, no data."""
    cfg = compose_config(
        "train",
        ["+experiment=la", "data.root=/elsewhere/LA", "model.features=4",
         "data.patch_size=[16,16,8]", "evaluation.stride=[8,8,8]"],
        tmp_path / "run",
    )  # fmt: skip
    method = instantiate(cfg.method)
    save_as_lightning(method, cfg, tmp_path / "la.ckpt")
    volume = (300 + 40 * np.random.default_rng(2).normal(size=(20, 18, 10))).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.diag([0.625] * 3 + [1])), tmp_path / "la.nii")

    manifest = predict_files(tmp_path / "la.ckpt", tmp_path / "la.nii", tmp_path / "out")

    labels = np.asarray(nib.load(tmp_path / "out" / "la.nii").dataobj)  # .nii stays .nii
    zscored = (volume - volume.astype(np.float64).mean()) / volume.std(dtype=np.float64)
    direct = expected_labels(method.eval(), zscored.astype(np.float32))
    np.testing.assert_array_equal(labels, direct)
    assert set(np.unique(labels)) <= {0, 1}
    assert manifest["inference"]["inference"] == "sliding-window"
    assert manifest["input_protocol"]["normalize"] == "zscore"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(DataError, match=r"a\.png: 2-D image \(8, 8\), but the model is 3-D"):
        predict_files(tmp_path / "la.ckpt", tmp_path / "a.png", tmp_path / "out2")


def test_predict_command_line(checkpoint, tmp_path, monkeypatch):
    from segssl.cli import main

    Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)).save(tmp_path / "x.png")
    monkeypatch.chdir(tmp_path)
    main(["predict", f"ckpt_path={checkpoint}", "input=x.png", "output=masks", "model_name=net2"])
    manifest = json.loads((tmp_path / "masks" / "predictions.json").read_text())
    assert manifest["model"] == "net2" and (tmp_path / "masks" / "x.png").is_file()
    assert (tmp_path / "masks" / "overlays" / "x_overlay.png").is_file()


# -- issue 24: masks named like their inputs, in a folder of their own; overlays of 2-D masks ---
def test_masks_are_named_like_their_inputs_as_nnunet_names_them(checkpoint, tmp_path):
    inputs = tmp_path / "imagesTs"
    inputs.mkdir()
    rng = np.random.default_rng(5)
    for name in ("case_001_0000.nii.gz", "case_002.nii.gz", "scan.nii"):
        volume = (100 + 30 * rng.normal(size=(20, 18, 3))).astype(np.float32)
        nib.save(nib.Nifti1Image(volume, np.eye(4)), inputs / name)

    manifest = predict_files(checkpoint, inputs, tmp_path / "labelsTs")

    # nnU-Net's channel suffix dropped: the names of the cases' masks in labelsTr
    names = ["case_001.nii.gz", "case_002.nii.gz", "scan.nii", "predictions.json"]
    assert sorted(p.name for p in (tmp_path / "labelsTs").iterdir()) == sorted(names)
    assert [Path(p["output"]).name for p in manifest["predictions"]] == names[:3]
    assert nib.load(tmp_path / "labelsTs" / "scan.nii").shape == (20, 18, 3)
    assert "overlay" not in manifest["predictions"][0]  # 3-D masks get none


def test_a_png_mask_keeps_label_values_and_gets_a_colour_overlay(checkpoint, method, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    ramp = np.add.outer(np.arange(32), np.arange(28)).astype(np.float64)
    png = (255 * ramp / ramp.max()).astype(np.uint8)
    Image.fromarray(png).save(inputs / "slice_07.png")
    out = tmp_path / "masks"

    manifest = predict_files(checkpoint, inputs / "slice_07.png", out)

    mask = np.asarray(Image.open(out / "slice_07.png"))
    labels = expected_labels(method, minmax(png)[None])[0]
    np.testing.assert_array_equal(mask, labels)  # class indices, not colours (nnU-Net, ITK)
    assert mask.max() < 4
    overlay_file = out / "overlays" / "slice_07_overlay.png"
    assert manifest["predictions"][0]["overlay"] == str(overlay_file.resolve())
    overlay = np.asarray(Image.open(overlay_file)).astype(int)
    assert overlay.shape == (32, 28, 3)
    grey = overlay[..., 0] == overlay[..., 1]
    grey &= overlay[..., 1] == overlay[..., 2]
    # background shows the image in grey; every labelled pixel is coloured
    assert grey[labels == 0].all()
    np.testing.assert_allclose(overlay[labels == 0][:, 0], png[labels == 0], atol=1)
    if (labels > 0).any():
        assert not grey[labels > 0].any()
    # no overlays when switched off, and none for other formats
    predict_files(checkpoint, inputs / "slice_07.png", tmp_path / "plain", overlays=False)
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == [
        "predictions.json",
        "slice_07.png",
    ]


def test_the_overlay_colours_each_class(tmp_path):
    from segssl.commands.predict import OVERLAY_ALPHA, OVERLAY_COLOURS, write_overlay
    from segssl.data.image_io import InputImage

    volume = np.full((1, 4, 6), 0.5, np.float32)
    volume[0, 0, 0] = 0.0
    volume[0, 0, 1] = 1.0
    labels = np.zeros((1, 4, 6), np.uint8)
    labels[0, 1, :2], labels[0, 2, :2], labels[0, 3, :2] = 1, 2, 3
    image = InputImage(tmp_path / "x.png", "png", volume, (4, 6), (0, 1, 2), "minmax")
    write_overlay(image, labels, tmp_path / "o.png")
    rgb = np.asarray(Image.open(tmp_path / "o.png")).astype(float)
    for label in (1, 2, 3):
        expected = (1 - OVERLAY_ALPHA) * 127.5 + OVERLAY_ALPHA * OVERLAY_COLOURS[label - 1]
        np.testing.assert_allclose(rgb[label, 0], expected, atol=1)
    assert len({tuple(rgb[label, 0]) for label in (1, 2, 3)}) == 3


def test_refuses_to_write_into_the_input_folder(checkpoint, tmp_path):
    png = np.arange(24 * 20, dtype=np.uint8).reshape(24, 20)
    Image.fromarray(png).save(tmp_path / "a.png")
    before = (tmp_path / "a.png").read_bytes()
    for overwrite in (False, True):  # overwrite=true replaces earlier masks, never an input
        with pytest.raises(SettingsError, match=r"output=.*holds the inputs.*output=DIR"):
            predict_files(checkpoint, tmp_path / "a.png", tmp_path, overwrite=overwrite)
        with pytest.raises(SettingsError, match="holds the inputs"):
            predict_files(checkpoint, [tmp_path / "a.png"], tmp_path / "." / "x" / "..")
    assert (tmp_path / "a.png").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_two_inputs_with_one_mask_name_are_refused(checkpoint, tmp_path):
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
        Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(
            tmp_path / folder / "a.png"
        )
    with pytest.raises(DataError, match=r"would both write .*a\.png"):
        predict_files(checkpoint, [tmp_path / "one", tmp_path / "two"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_existing_overlay_is_not_overwritten(checkpoint, tmp_path):
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(tmp_path / "a.png")
    overlays = tmp_path / "out" / "overlays"
    overlays.mkdir(parents=True)
    (overlays / "a_overlay.png").write_bytes(b"mine")
    with pytest.raises(FileExistsError, match=r"a_overlay\.png.*overwrite=true"):
        predict_files(checkpoint, tmp_path / "a.png", tmp_path / "out")
    assert (overlays / "a_overlay.png").read_bytes() == b"mine"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["overlays"]
