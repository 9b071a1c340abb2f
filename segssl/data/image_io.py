"""The one place image files are read, normalised and written: NIfTI, h5 and PNG.

Readers give float32 arrays (or the file's own dtype where asked), and every failure is a
``DataError`` naming the file. PNG rule: greyscale only. A grey image stored as RGB(A) (equal
colour channels) is read as its grey values, a palette image through its colours; a real
colour image is refused, since no single grey conversion is right for segmentation input.
Intensities are the file's own (8-bit PNGs stay 0..255): scaling is ``normalise``'s job.

``normalise`` is the per-volume min-max / z-score used by every data path (prepare_acdc, the
synthetic phantom, the NIfTI folder layout, predict), computed in float64 and stored as float32;
and nnU-Net's CT normalisation (``ct``: clip to dataset-wide foreground percentiles, z-score
with the dataset's foreground mean and std), whose numbers are given (``intensity``), not
computed per volume.

For ``segssl predict``: an input becomes the model's float volume ``(D, H, W)`` (2-D
slice-wise models read it slice by slice along D; 3-D models take it whole), resampled to the
training spacing (NIfTI, when the run had ``target_spacing``) and normalised as the training
data was; the predicted labels go back to the file's own grid, axis order and geometry (NIfTI
affine and header kept).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import nibabel as nib
import numpy as np

from segssl.data import resample
from segssl.data.readers import DataError, Sample, check_sample

log = logging.getLogger(__name__)

SUFFIXES = (".nii.gz", ".nii", ".h5", ".png")
NORMALIZATIONS = ("minmax", "zscore", "none", "ct")
# the dataset-wide numbers of ``ct`` normalisation (data.layout_options.intensity)
INTENSITY_KEYS = ("low", "high", "mean", "std")
INTENSITY_KEY = "data.layout_options.intensity"
# earlier segssl versions named masks <input>_pred: such files in an input folder are skipped
PRED_SUFFIX = "_pred"
LA_FILE_NAME = "mri_norm2.h5"  # UA-MT's LA volumes are stored (H, W, D), unlike ACDC's (D, H, W)


@dataclass(frozen=True)
class InputProtocol:
    """How files become model input: ``dims`` 2 (slice-wise) or 3; the intensity normalisation
    of NIfTI/PNG files and of h5 files (stored already normalised in the training layouts);
    ``nifti_axes``, the NIfTI axes taken as (D, H, W); ``target_spacing``, the spacing (mm, NIfTI
    axis order) NIfTI input is resampled to (None: as it is); ``intensity``, the numbers of
    ``ct`` normalisation."""

    dims: int
    normalize: str
    h5_normalize: str
    nifti_axes: tuple[int, int, int]
    target_spacing: tuple[float, float, float] | None = None
    intensity: dict[str, float] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for name in ("normalize", "h5_normalize"):
            if getattr(self, name) not in NORMALIZATIONS:
                raise ValueError(
                    f"normalize={getattr(self, name)!r}: expected one of {list(NORMALIZATIONS)}"
                )
        if sorted(self.nifti_axes) != [0, 1, 2]:
            raise ValueError(f"axes={list(self.nifti_axes)}: expected a permutation of [0, 1, 2]")
        object.__setattr__(
            self, "target_spacing", resample.check_target_spacing(self.target_spacing)
        )
        needs_ct = "ct" in (self.normalize, self.h5_normalize)
        object.__setattr__(
            self, "intensity", check_intensity(self.intensity, "ct" if needs_ct else None)
        )


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
    # resampled input: the file's 3-D grid (file axis order) the labels are resampled back to
    grid_shape: tuple[int, int, int] | None = None

    def to_file_order(self, labels: np.ndarray) -> np.ndarray:
        """Labels ``(D, H, W)`` back in the file's axis order, grid and shape (a resampled
        input's labels by nearest neighbour, so they stay class indices)."""
        array = np.transpose(labels, np.argsort(self.axes))
        if self.grid_shape is not None:
            array = resample.resize(array, self.grid_shape, "nearest")
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
    """Read one image file as the model's normalised (D, H, W) volume; NIfTI input is first
    resampled to ``protocol.target_spacing`` from its header's spacing (h5 and PNG files carry
    no spacing and are used on their own grid)."""
    kind = image_kind(path)
    spacing: list[float] = []
    if kind == "nifti":
        nifti, array = read_nifti(path)
        axes, normalize = protocol.nifti_axes, protocol.normalize
        spacing = [float(z) for z in nifti.header.get_zooms()[: array.ndim]]
    elif kind == "h5":
        nifti, array = None, read_h5(path)
        axes, normalize = (0, 1, 2), protocol.h5_normalize
    elif kind == "png":
        nifti, array = None, read_png(path)
        axes, normalize = (0, 1, 2), protocol.normalize
    else:
        raise DataError(f"{path}: unsupported file type, expected one of {SUFFIXES}")
    file_shape = array.shape
    if array.ndim == 2:
        if protocol.dims == 3:
            raise DataError(f"{path}: 2-D image {array.shape}, but the model is 3-D")
        # one slice: NIfTI (x, y) gets its slice axis where the model's D axis is (the folder
        # layout's slice_axis, z for ACDC), h5 and PNG (H, W) get a leading D axis
        if kind == "nifti":
            array = np.expand_dims(array, axes[0])
            spacing.insert(axes[0], 1.0)
        else:
            array = array[None]
    if not np.isfinite(array).all():
        raise DataError(f"{path}: the image contains NaN or inf values")
    grid_shape = None
    if kind == "nifti" and protocol.target_spacing is not None:
        resampled, _ = resample.resample(array, spacing, protocol.target_spacing, "linear")
        if resampled.shape != array.shape:
            grid_shape, array = array.shape, resampled
    volume = normalise(np.transpose(array, axes), normalize, path, intensity=protocol.intensity)
    return InputImage(
        path, kind, volume, file_shape, tuple(axes), normalize, nifti, grid_shape=grid_shape
    )


def normalise(
    volume: np.ndarray,
    how: str,
    source: str | Path,
    *,
    constant: str = "error",
    intensity: Mapping[str, float] | None = None,
) -> np.ndarray:
    """Intensity normalisation, computed in float64 and returned as float32, so every data path
    gives the same values: per volume ``minmax`` (to [0, 1]) or ``zscore``; ``none``; or ``ct``
    with the dataset's numbers ``intensity`` (see ``check_intensity``): clip to [low, high],
    then (x - mean) / std.

    ``constant`` says what a constant volume becomes under minmax/zscore: ``"error"`` (a
    ``DataError`` naming ``source``; for a file a user hands in) or ``"zeros"`` (for training
    data, where one blank volume must not stop a run)."""
    values = np.asarray(volume, dtype=np.float64)
    if how not in NORMALIZATIONS:
        raise ValueError(f"normalize={how!r}: expected one of {list(NORMALIZATIONS)}")
    if constant not in ("error", "zeros"):
        raise ValueError(f"constant={constant!r}: expected 'error' or 'zeros'")
    if how == "none":
        return np.ascontiguousarray(values, dtype=np.float32)
    if values.size and not np.isfinite(values).all():
        raise DataError(f"{source}: the image contains NaN or inf values")
    if how == "ct":
        stats = check_intensity(intensity, how)
        assert stats is not None  # check_intensity raises for ct without numbers
        values = (np.clip(values, stats["low"], stats["high"]) - stats["mean"]) / stats["std"]
        return np.ascontiguousarray(values, dtype=np.float32)
    low, high = (values.min(), values.max()) if values.size else (0.0, 0.0)
    if high <= low:
        if constant == "error":
            what = "min-max normalise" if how == "minmax" else "z-score"
            raise DataError(f"{source}: constant image (value {low}), cannot {what}")
        return np.zeros(values.shape, dtype=np.float32)
    if how == "minmax":
        values = (values - low) / (high - low)
    else:
        values = (values - values.mean()) / values.std()
    return np.ascontiguousarray(values, dtype=np.float32)


def check_intensity(intensity: Any, normalize: str | None) -> dict[str, float] | None:
    """The ``ct`` numbers as floats ``{low, high, mean, std}`` (None when not given and not
    needed), else a ``DataError`` naming ``data.layout_options.intensity``: ``normalize=ct``
    needs all four, finite, with low <= high and std > 0."""
    expected = (
        "expected {low: float, high: float, mean: float, std: float} (the dataset's foreground "
        "intensity percentiles to clip to, then its foreground mean and std) with low <= high "
        "and std > 0"
    )
    if intensity is None:
        if normalize == "ct":
            raise DataError(f"{INTENSITY_KEY}=null but normalize=ct: {expected}")
        return None
    if not isinstance(intensity, Mapping) or set(intensity) != set(INTENSITY_KEYS):
        raise DataError(f"{INTENSITY_KEY}={intensity!r}: {expected}")
    try:
        stats = {k: float(intensity[k]) for k in INTENSITY_KEYS}
    except (TypeError, ValueError) as err:
        raise DataError(f"{INTENSITY_KEY}={intensity!r}: {expected}") from err
    if (
        any(isinstance(intensity[k], bool) for k in INTENSITY_KEYS)
        or not all(np.isfinite(v) for v in stats.values())
        or stats["std"] <= 0
        or stats["low"] > stats["high"]
    ):
        raise DataError(f"{INTENSITY_KEY}={dict(intensity)!r}: {expected}")
    return stats


def write_labels(image: InputImage, labels: np.ndarray, target: Path) -> Path:
    """Write the ``(D, H, W)`` label map in the input's format, axis order and geometry."""
    array = image.to_file_order(labels.astype(np.uint8))
    target.parent.mkdir(parents=True, exist_ok=True)
    if image.kind == "nifti":
        write_nifti(target, array, like=image.nifti)
    elif image.kind == "h5":
        write_h5(target, {"label": array})
    else:
        write_png(target, array)
    return target


# -- readers --------------------------------------------------------------------------------
def read_nifti(
    path: Path, dtype: type | None = np.float32, ndims: tuple[int, ...] = (2, 3)
) -> tuple[Any, np.ndarray]:
    """The nibabel image (affine, header) and its voxel array: scaled to ``dtype``, or with
    ``dtype=None`` in the file's own type (integer labels stay integers). Trailing singleton
    axes are dropped; the array must then have one of ``ndims`` dimensions."""
    try:
        nifti = nib.load(str(path))
        if dtype is None:
            array = np.asanyarray(nifti.dataobj)
        else:
            array = np.asarray(nifti.get_fdata(dtype=dtype))
    except FileNotFoundError as err:
        raise DataError(f"{path}: no such file") from err
    except Exception as err:  # nibabel raises several types for unreadable files
        raise DataError(f"{path}: cannot read as NIfTI ({err})") from err
    while array.ndim > max(ndims) and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in ndims:
        expected = " or ".join(f"{n}-D" for n in ndims)
        raise DataError(f"{path}: shape {array.shape}, expected a single-channel {expected} image")
    return nifti, array


def read_h5(path: Path, key: str = "image") -> np.ndarray:
    """Dataset ``key`` of an h5 file as a 2-D or 3-D float32 array."""
    array = _read_h5_datasets(path, (key,))[0][key].astype(np.float32, copy=False)
    if array.ndim not in (2, 3):
        raise DataError(f"{path}: {key!r} has shape {array.shape}, expected 2-D or 3-D")
    return array


def read_h5_sample(
    path: Path,
    *,
    num_classes: int,
    require_label: bool = True,
    expected_ndim: int | None = None,
) -> Sample:
    """A training or evaluation case of the SSL4MIS and UA-MT layouts: ``image`` (float32),
    ``label`` (as stored; required unless ``require_label`` is false) and the ``spacing``
    attribute when the file has one, checked by ``check_sample`` (dimensions, finiteness, label
    shape and range)."""
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    keys, optional = (("image", "label"), ()) if require_label else (("image",), ("label",))
    arrays, attrs = _read_h5_datasets(path, keys, optional)
    image, label = arrays["image"].astype(np.float32, copy=False), arrays.get("label")
    spacing = tuple(float(s) for s in attrs["spacing"]) if "spacing" in attrs else None
    check_sample(path, image, label, num_classes=num_classes, expected_ndim=expected_ndim)
    return Sample(case=path.stem, image=image, label=label, spacing=spacing)


def _read_h5_datasets(
    path: Path, keys: tuple[str, ...], optional: tuple[str, ...] = ()
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The datasets ``keys`` and those of ``optional`` that the file has, as stored, and the
    file's attributes; a missing key or an unreadable file is a DataError naming the file."""
    try:
        with h5py.File(path, "r") as handle:
            arrays = {}
            for key in (*keys, *optional):
                if key not in handle:
                    if key in optional:
                        continue
                    raise DataError(
                        f"{path}: missing h5 key {key!r} (keys: {sorted(handle.keys())})"
                    )
                arrays[key] = np.asarray(handle[key][()])
            attrs = dict(handle.attrs)
    except OSError as err:
        raise DataError(f"{path}: cannot read as HDF5 ({err})") from err
    return arrays, attrs


def read_png(path: Path) -> np.ndarray:
    """A greyscale PNG as float32 (H, W) with its stored values; colour is refused (see the
    module docstring)."""
    from PIL import Image

    try:
        with Image.open(path) as png:
            if png.mode in ("P", "PA"):  # palette indices are not intensities: their colours
                png = png.convert("RGBA")
            array = np.asarray(png)
    except OSError as err:
        raise DataError(f"{path}: cannot read as PNG ({err})") from err
    if array.ndim == 3:  # grey + alpha, or grey stored as RGB(A): equal channels only
        colour = array[..., :1] if array.shape[-1] == 2 else array[..., :3]
        if not (colour == colour[..., :1]).all():
            raise DataError(
                f"{path}: colour PNG {array.shape}, expected a greyscale image (convert it to "
                "grey first: segssl does not guess which grey conversion fits your data)"
            )
        array = colour[..., 0]
    return array.astype(np.float32)


def read_slice(
    path: str | Path, slice_index: int | None = None, axis: int | None = None
) -> np.ndarray:
    """Read one 2-D float32 image from an h5 file (key ``image``), a NIfTI file or a greyscale
    PNG, as ``predict`` reads them (so a colour PNG is refused); the ``filter`` panel's input.

    For a 3-D volume, ``slice_index`` picks the slice along ``axis`` (default: the middle slice).
    Default axis: 0 for h5 volumes (ACDC stores (D, H, W)) except LA's ``mri_norm2.h5`` and NIfTI
    files, which store the slice axis last (-1).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    name = path.name.lower()
    if name.endswith((".h5", ".hdf5")):
        array = read_h5(path)
        default_axis = -1 if name == LA_FILE_NAME else 0
    elif name.endswith((".nii", ".nii.gz")):
        array, default_axis = read_nifti(path)[1], -1
    elif name.endswith(".png"):
        array, default_axis = read_png(path), 0
    else:
        raise ValueError(f"{path}: unsupported file type, expected .h5/.hdf5, .nii/.nii.gz or .png")
    image = _pick_slice(array, path, slice_index, default_axis if axis is None else axis)
    return np.ascontiguousarray(image, dtype=np.float32)


def _pick_slice(array: np.ndarray, path: Path, slice_index: int | None, axis: int) -> np.ndarray:
    """2-D arrays pass through; 3-D ones give one slice; anything else is an error."""
    if array.ndim == 2:
        return array
    if array.ndim != 3:
        raise ValueError(f"{path}: image has shape {array.shape}, expected a 2-D or 3-D array")
    if not -3 <= axis < 3:
        raise ValueError(f"{path}: axis={axis} out of range for a 3-D image of shape {array.shape}")
    size = array.shape[axis]
    index = size // 2 if slice_index is None else slice_index
    if not -size <= index < size:
        raise ValueError(
            f"{path}: slice_index={slice_index} out of range for {size} slices along axis {axis}"
        )
    return np.take(array, index, axis=axis)


# -- writers --------------------------------------------------------------------------------
def write_h5(
    path: Path, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any] | None = None
) -> Path:
    """One h5 file of gzip-compressed datasets (as the SSL4MIS and UA-MT files are) and
    optional attributes. Not atomic by itself: write into a staged folder or ``atomic_path``."""
    with h5py.File(path, "w") as handle:
        for key, array in arrays.items():
            handle.create_dataset(key, data=array, compression="gzip")
        for key, value in (attrs or {}).items():
            handle.attrs[key] = value
    return path


def write_h5_case(path: Path, image: np.ndarray, label: np.ndarray, **attrs: Any) -> Path:
    """A training case file: ``image`` and ``label`` datasets, attributes such as ``spacing``."""
    return write_h5(path, {"image": image, "label": label}, attrs)


def write_nifti(path: Path, array: np.ndarray, like: Any) -> Path:
    """``array`` as NIfTI with the affine and header of ``like`` (dtype and scaling of the
    array: a label map is stored as integers, not rescaled)."""
    header = like.header.copy()
    header.set_data_dtype(array.dtype)
    out = type(like)(array, like.affine, header)
    out.header.set_slope_inter(1.0, 0.0)
    nib.save(out, str(path))
    return path


def write_png(path: Path, array: np.ndarray) -> Path:
    """An 8-bit greyscale PNG of a uint8 (H, W) array."""
    from PIL import Image

    if array.dtype != np.uint8 or array.ndim != 2:
        raise ValueError(
            f"{path}: a PNG is written from a 2-D uint8 array, got {array.dtype} {array.shape}"
        )
    Image.fromarray(array, mode="L").save(path)
    return path
