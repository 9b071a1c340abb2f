"""segssl.data.image_io: the one reader / normaliser / writer of NIfTI, h5 and PNG files."""

from __future__ import annotations

from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from segssl.data.image_io import (
    normalise,
    read_h5,
    read_nifti,
    read_png,
    write_h5_case,
    write_nifti,
    write_png,
)
from segssl.data.readers import DataError

# ------------------------------------------------------------------------------- normalise


@pytest.mark.parametrize(
    ("how", "values", "expected"),
    [
        ("minmax", [2.0, 4.0, 6.0], [0.0, 0.5, 1.0]),
        ("zscore", [1.0, 2.0, 3.0], [-np.sqrt(1.5), 0.0, np.sqrt(1.5)]),
        ("none", [7.0, -1.0, 3.5], [7.0, -1.0, 3.5]),
    ],
)
def test_normalise_known_values(how: str, values: list, expected: list) -> None:
    out = normalise(np.array(values, dtype=np.int16 if how == "minmax" else float), how, "x")
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(out, expected, rtol=1e-6)


@pytest.mark.parametrize("how", ["minmax", "zscore"])
def test_normalise_constant_volume_error_or_zeros(how: str) -> None:
    flat = np.full((2, 3), 5.0)
    with pytest.raises(DataError, match=r"case\.nii: constant image \(value 5\.0\)"):
        normalise(flat, how, "case.nii")
    zeros = normalise(flat, how, "case.nii", constant="zeros")
    assert zeros.dtype == np.float32 and not zeros.any() and zeros.shape == (2, 3)


def test_normalise_refuses_non_finite_and_unknown_settings() -> None:
    with pytest.raises(DataError, match="bad.h5: the image contains NaN or inf"):
        normalise(np.array([0.0, np.nan, 1.0]), "minmax", "bad.h5", constant="zeros")
    with pytest.raises(ValueError, match=r"normalize='max'.*minmax"):
        normalise(np.ones(3), "max", "x")
    with pytest.raises(ValueError, match="constant='skip'"):
        normalise(np.ones(3), "minmax", "x", constant="skip")


@pytest.mark.parametrize("how", ["minmax", "zscore"])
def test_normalise_matches_the_monai_transforms_the_folder_layout_used(how: str) -> None:
    """The NIfTI folder layout used MONAI (float32); the shared float64 path agrees to float32
    rounding, so cached and predicted inputs stay what training saw."""
    from monai.transforms import NormalizeIntensity, ScaleIntensity

    image = (30 + 10 * np.random.default_rng(0).normal(size=(4, 20, 24))).astype(np.float32)
    monai = NormalizeIntensity() if how == "zscore" else ScaleIntensity(minv=0.0, maxv=1.0)
    np.testing.assert_allclose(normalise(image, how, "x"), np.asarray(monai(image)), atol=2e-6)


# --------------------------------------------------------------------------------- readers


def save_png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(array, mode=mode).save(path)
    return path


def test_read_png_greyscale_forms(tmp_path: Path) -> None:
    grey = (np.arange(30).reshape(5, 6) * 8).astype(np.uint8)
    for name, array, mode in [
        ("l.png", grey, None),
        ("rgb.png", np.repeat(grey[..., None], 3, axis=2), None),
        ("rgba.png", np.dstack([grey, grey, grey, np.full_like(grey, 255)]), None),
        ("la.png", np.dstack([grey, np.full_like(grey, 9)]), "LA"),
    ]:
        out = read_png(save_png(tmp_path / name, array, mode))
        assert out.dtype == np.float32 and out.shape == (5, 6), name
        np.testing.assert_array_equal(out, grey, err_msg=name)
    deep = (np.arange(30).reshape(5, 6) * 2000).astype(np.uint16)
    np.testing.assert_array_equal(read_png(save_png(tmp_path / "16.png", deep)), deep)
    palette = Image.fromarray(grey).convert("P")  # grey colours behind palette indices
    palette.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_png(tmp_path / "p.png"), grey)


def test_read_png_refuses_colour(tmp_path: Path) -> None:
    rgb = np.zeros((5, 6, 3), dtype=np.uint8)
    rgb[..., 1] = 200
    with pytest.raises(DataError, match=r"c\.png: colour PNG \(5, 6, 3\).*greyscale"):
        read_png(save_png(tmp_path / "c.png", rgb))
    Image.fromarray(rgb).convert("P").save(tmp_path / "cp.png")
    with pytest.raises(DataError, match=r"cp\.png: colour PNG"):
        read_png(tmp_path / "cp.png")
    (tmp_path / "text.png").write_text("not a png")
    with pytest.raises(DataError, match=r"text\.png: cannot read as PNG"):
        read_png(tmp_path / "text.png")


def test_read_h5_checks_key_and_shape(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "ok.h5", "w") as handle:
        handle["image"] = np.arange(6, dtype=np.int16).reshape(2, 3)
        handle["vector"] = np.zeros(4)
    np.testing.assert_array_equal(read_h5(tmp_path / "ok.h5"), [[0, 1, 2], [3, 4, 5]])
    assert read_h5(tmp_path / "ok.h5").dtype == np.float32
    with pytest.raises(DataError, match=r"ok\.h5: missing h5 key 'label' \(keys: \['image'"):
        read_h5(tmp_path / "ok.h5", key="label")
    with pytest.raises(DataError, match=r"ok\.h5: 'vector' has shape \(4,\), expected 2-D"):
        read_h5(tmp_path / "ok.h5", key="vector")
    (tmp_path / "junk.h5").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"junk\.h5: cannot read as HDF5"):
        read_h5(tmp_path / "junk.h5")


def test_read_nifti_dtype_squeeze_and_errors(tmp_path: Path) -> None:
    labels = np.arange(24, dtype=np.int16).reshape(2, 3, 4, 1)
    nib.save(nib.Nifti1Image(labels, np.eye(4)), tmp_path / "l.nii.gz")
    nifti, scaled = read_nifti(tmp_path / "l.nii.gz")
    assert scaled.dtype == np.float32 and scaled.shape == (2, 3, 4)  # trailing axis dropped
    _, stored = read_nifti(tmp_path / "l.nii.gz", dtype=None, ndims=(3,))
    assert np.issubdtype(stored.dtype, np.integer)
    np.testing.assert_array_equal(stored, labels[..., 0])
    assert nifti.header.get_zooms()[:3] == (1.0, 1.0, 1.0)
    nib.save(nib.Nifti1Image(np.zeros((3, 4), np.float32), np.eye(4)), tmp_path / "s.nii")
    with pytest.raises(DataError, match=r"s\.nii: shape \(3, 4\), expected a single-channel 3-D"):
        read_nifti(tmp_path / "s.nii", ndims=(3,))
    (tmp_path / "bad.nii.gz").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"bad\.nii\.gz: cannot read as NIfTI"):
        read_nifti(tmp_path / "bad.nii.gz")


# --------------------------------------------------------------------------------- writers


def test_write_h5_case_round_trip(tmp_path: Path) -> None:
    image = np.random.default_rng(1).random((3, 4, 5)).astype(np.float32)
    label = (image > 0.5).astype(np.uint8)
    path = write_h5_case(tmp_path / "case.h5", image, label, spacing=np.array([5.0, 1.5, 1.5]))
    with h5py.File(path, "r") as handle:
        np.testing.assert_array_equal(handle["image"][()], image)
        np.testing.assert_array_equal(handle["label"][()], label)
        assert handle["image"].compression == "gzip"
        np.testing.assert_array_equal(handle.attrs["spacing"], [5.0, 1.5, 1.5])


def test_write_nifti_keeps_geometry_and_stores_labels_unscaled(tmp_path: Path) -> None:
    affine = np.diag([0.7, 0.8, 5.0, 1.0])
    like = nib.Nifti1Image(np.zeros((4, 5, 2), np.float32), affine)
    labels = np.random.default_rng(2).integers(0, 4, (4, 5, 2)).astype(np.uint8)
    written = nib.load(str(write_nifti(tmp_path / "pred.nii.gz", labels, like=like)))
    np.testing.assert_allclose(written.affine, affine)
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), labels)


def test_write_png_round_trip_and_refuses_other_arrays(tmp_path: Path) -> None:
    labels = np.array([[0, 1], [2, 3]], dtype=np.uint8)
    np.testing.assert_array_equal(read_png(write_png(tmp_path / "m.png", labels)), labels)
    with pytest.raises(ValueError, match=r"x\.png: a PNG is written from a 2-D uint8 array"):
        write_png(tmp_path / "x.png", labels.astype(np.int64))
