"""Image files in and label maps out for ``segssl predict``: NIfTI, h5 and PNG.

An input becomes the model's float volume ``(D, H, W)`` (2-D slice-wise models read it slice by
slice along D; 3-D models take it whole), normalised as the training data was; the predicted
labels go back to the file's own axis order and geometry (NIfTI affine and header kept).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import nibabel as nib
import numpy as np

from segssl.data.readers import DataError

log = logging.getLogger(__name__)

SUFFIXES = (".nii.gz", ".nii", ".h5", ".png")
NORMALIZATIONS = ("minmax", "zscore", "none")
PRED_SUFFIX = "_pred"


@dataclass(frozen=True)
class InputProtocol:
    """How files become model input: ``dims`` 2 (slice-wise) or 3; the intensity normalisation
    of NIfTI/PNG files and of h5 files (stored already normalised in the training layouts); and
    ``nifti_axes``, the NIfTI axes taken as (D, H, W)."""

    dims: int
    normalize: str
    h5_normalize: str
    nifti_axes: tuple[int, int, int]

    def __post_init__(self) -> None:
        for name in ("normalize", "h5_normalize"):
            if getattr(self, name) not in NORMALIZATIONS:
                raise ValueError(
                    f"normalize={getattr(self, name)!r}: expected one of {list(NORMALIZATIONS)}"
                )
        if sorted(self.nifti_axes) != [0, 1, 2]:
            raise ValueError(f"axes={list(self.nifti_axes)}: expected a permutation of [0, 1, 2]")


@dataclass
class InputImage:
    """One input file read as the model's volume, with what is needed to write its labels."""

    path: Path
    kind: str  # nifti | h5 | png
    volume: np.ndarray  # (D, H, W) float32, normalised
    file_shape: tuple[int, ...]  # the array shape in the file (2-D or 3-D)
    axes: tuple[int, int, int]  # volume = file array (as 3-D) transposed by these axes
    normalize: str
    nifti: Any = None  # the nibabel image (affine and header) for NIfTI input

    def to_file_order(self, labels: np.ndarray) -> np.ndarray:
        """Labels ``(D, H, W)`` back in the file's axis order and shape."""
        array = np.transpose(labels, np.argsort(self.axes))
        return np.ascontiguousarray(array.reshape(self.file_shape))


def image_kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith((".nii.gz", ".nii")):
        return "nifti"
    return {".h5": "h5", ".png": "png"}.get(path.suffix.lower())


def stem(path: Path) -> str:
    """The file name without its image suffix (``case.nii.gz`` -> ``case``)."""
    name = path.name
    for suffix in SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def output_name(path: Path) -> str:
    """``<name>_pred`` with the suffix of the input's format (NIfTI is always written gzipped)."""
    suffix = {"nifti": ".nii.gz", "h5": ".h5", "png": ".png"}[image_kind(path) or ""]
    return f"{stem(path)}{PRED_SUFFIX}{suffix}"


def list_inputs(inputs: str | Path | list) -> list[Path]:
    """Input files: each given file, and every image file directly inside each given folder
    (sorted; files named ``*_pred.*`` are earlier predictions and skipped)."""
    items = [inputs] if isinstance(inputs, str | Path) else list(inputs)
    if not items:
        raise DataError("input: expected a file or a folder, got nothing")
    files: list[Path] = []
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and image_kind(p))
            skipped = [p for p in found if stem(p).endswith(PRED_SUFFIX)]
            if skipped:
                log.info("Skipping %d earlier prediction(s) in %s", len(skipped), path)
            found = [p for p in found if p not in skipped]
            if not found:
                raise DataError(f"input={path}: no image files ({', '.join(SUFFIXES)}) in folder")
            files += found
        elif path.is_file():
            if image_kind(path) is None:
                raise DataError(f"input={path}: unsupported file type, expected {SUFFIXES}")
            files.append(path)
        else:
            raise DataError(f"input={path}: no such file or folder")
    return files


def read_input(path: Path, protocol: InputProtocol) -> InputImage:
    """Read one image file as the model's normalised (D, H, W) volume."""
    kind = image_kind(path)
    if kind == "nifti":
        nifti, array = _read_nifti(path)
        axes, normalize = protocol.nifti_axes, protocol.normalize
    elif kind == "h5":
        nifti, array = None, _read_h5(path)
        axes, normalize = (0, 1, 2), protocol.h5_normalize
    elif kind == "png":
        nifti, array = None, _read_png(path)
        axes, normalize = (0, 1, 2), protocol.normalize
    else:
        raise DataError(f"{path}: unsupported file type, expected one of {SUFFIXES}")
    file_shape = array.shape
    if array.ndim == 2:
        if protocol.dims == 3:
            raise DataError(f"{path}: 2-D image {array.shape}, but the model is 3-D")
        # one slice: NIfTI (x, y) gets its z axis, h5 and PNG (H, W) get a leading D axis
        array = array[..., None] if kind == "nifti" else array[None]
    if not np.isfinite(array).all():
        raise DataError(f"{path}: the image contains NaN or inf values")
    volume = normalise(np.transpose(array, axes), normalize, path)
    return InputImage(path, kind, volume, file_shape, tuple(axes), normalize, nifti)


def normalise(volume: np.ndarray, how: str, path: Path) -> np.ndarray:
    """Per-volume intensity normalisation, computed in float64 as the preprocessing does."""
    values = volume.astype(np.float64)
    if how == "minmax":
        low, high = values.min(), values.max()
        if high <= low:
            raise DataError(f"{path}: constant image (value {low}), cannot min-max normalise")
        values = (values - low) / (high - low)
    elif how == "zscore":
        std = values.std()
        if std == 0:
            raise DataError(f"{path}: constant image (value {values.mean()}), cannot z-score")
        values = (values - values.mean()) / std
    elif how != "none":
        raise ValueError(f"normalize={how!r}: expected one of {list(NORMALIZATIONS)}")
    return np.ascontiguousarray(values, dtype=np.float32)


def write_labels(image: InputImage, labels: np.ndarray, target: Path) -> Path:
    """Write the ``(D, H, W)`` label map in the input's format, axis order and geometry."""
    array = image.to_file_order(labels.astype(np.uint8))
    target.parent.mkdir(parents=True, exist_ok=True)
    if image.kind == "nifti":
        header = image.nifti.header.copy()
        header.set_data_dtype(np.uint8)
        out = type(image.nifti)(array, image.nifti.affine, header)
        out.header.set_slope_inter(1.0, 0.0)
        nib.save(out, str(target))
    elif image.kind == "h5":
        with h5py.File(target, "w") as handle:
            handle.create_dataset("label", data=array, compression="gzip")
    else:
        from PIL import Image

        Image.fromarray(array, mode="L").save(target)
    return target


def _read_nifti(path: Path) -> tuple[Any, np.ndarray]:
    try:
        nifti = nib.load(str(path))
        array = np.asarray(nifti.get_fdata(dtype=np.float32))
    except Exception as err:  # nibabel raises several types for unreadable files
        raise DataError(f"{path}: cannot read as NIfTI ({err})") from err
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3):
        raise DataError(f"{path}: shape {array.shape}, expected a single-channel 2-D or 3-D image")
    return nifti, array


def _read_h5(path: Path) -> np.ndarray:
    try:
        with h5py.File(path, "r") as handle:
            if "image" not in handle:
                raise DataError(f"{path}: missing h5 key 'image' (keys: {sorted(handle.keys())})")
            array = np.asarray(handle["image"][()], dtype=np.float32)
    except OSError as err:
        raise DataError(f"{path}: cannot read as HDF5 ({err})") from err
    if array.ndim not in (2, 3):
        raise DataError(f"{path}: 'image' has shape {array.shape}, expected 2-D or 3-D")
    return array


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as png:
            array = np.asarray(png)
    except OSError as err:
        raise DataError(f"{path}: cannot read as PNG ({err})") from err
    if array.ndim == 3:  # grey stored as RGB(A): accept equal channels only
        colour = array[..., :3]
        if not (colour == colour[..., :1]).all():
            raise DataError(f"{path}: colour PNG {array.shape}, expected a greyscale image")
        array = colour[..., 0]
    return array.astype(np.float32)
