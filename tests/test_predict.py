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

    out = nib.load(tmp_path / "out" / "case1_pred.nii.gz")
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
        str((tmp_path / "out" / "case1_pred.nii.gz").resolve())
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

    with h5py.File(tmp_path / "out" / "patient9_frame01_pred.h5") as f:
        h5_labels = f["label"][()]
    assert h5_labels.shape == (3, 32, 30) and h5_labels.dtype == np.uint8
    np.testing.assert_array_equal(h5_labels, expected_labels(method, h5_image, "net1"))
    png_labels = np.asarray(Image.open(tmp_path / "out" / "slice_pred.png"))
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
    (out / "a_pred.png").write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match=r"a_pred\.png.*predictions\.json.*overwrite=true"):
        predict_files(checkpoint, tmp_path / "a.png", out)
    assert (out / "a_pred.png").read_bytes() == b"keep me"
    predict_files(checkpoint, tmp_path / "a.png", out, overwrite=True)
    assert np.asarray(Image.open(out / "a_pred.png")).shape == (24, 20)


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

    labels = np.asarray(nib.load(tmp_path / "out" / "la_pred.nii.gz").dataobj)
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
    assert manifest["model"] == "net2" and (tmp_path / "masks" / "x_pred.png").is_file()
