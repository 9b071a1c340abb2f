"""Convert the public NIH Pancreas-CT data (NIfTI images + TCIA labels) into MC-Net's h5 layout,
the one DSAIF-SEMI's Pancreas_CT config reads (``conf/data/pancreas.yaml``).

Why: the Pancreas-CT numbers of MC-Net, CoraNet and DSAIF depend on MC-Net's preprocessing and
its 62/20 case split; this rebuilds both from the public download without a third-party mirror.

Input ``raw_dir`` (searched at any depth):

* images ``imageNNNN.nii[.gz]`` or ``PANCREAS_NNNN.nii[.gz]`` in Hounsfield units. TCIA ships
  DICOM series; convert each series first (``dcm2niix``, or step 1 of MC-Net's notebook, which
  stacks the slices by InstanceNumber on the label's grid). Only nibabel is needed here.
* labels ``labelNNNN.nii[.gz]`` (``TCIA_pancreas_labels-02-05-2017``), values {0, 1}.

Output ``out_dir``::

    Pancreas_h5/imageNNNN_norm.h5   image float32 (X, Y, Z), label uint8 {0, 1},
                                    attrs: spacing (1, 1, 1), crop (x0, x1, y0, y1), source
    train.list / test.list          MC-Net's 62 training / 20 test cases (those present)
    extra.list                      cases outside MC-Net's split (none in the 82-case release)

Steps, as MC-Net's ``Pre-processing.ipynb`` (which CoraNet and DSAIF-SEMI reuse):

1. resample image and label to 1 mm isotropic; the new size per axis is
   ``int(size * spacing / 1.0)`` (MC-Net's floor rule);
2. clip to the abdominal window [-125, 275] HU (level 75, width 400) and scale to [0, 1];
3. crop x and y (not z) around the pancreas: the label's bounding box, widened to at least 96
   voxels (half the shortfall each side), plus a 25-voxel margin, clamped to the volume;
4. z-score over the cropped volume (float64, stored float32).

Choices where the papers leave room (written down so results are comparable):

* Orientation: the label's voxel grid is the reference (MC-Net gave the image the label's
  geometry). An image whose affine orders or flips the axes differently is reoriented to the
  label's axis codes (``nibabel.orientations``); its shape must then equal the label's. Arrays
  are stored in NIfTI voxel order (x, y, z), as MC-Net's transposed SimpleITK arrays.
* Interpolation: trilinear for images (MC-Net: B-spline) and nearest for labels, on
  ``segssl.data.resample``'s half-voxel-centred grid (MC-Net's SimpleITK grid starts at the
  first voxel centre); the output shapes are MC-Net's.
* Crop margin 25 voxels (``margin``), z uncropped, as MC-Net. Label stored uint8 (MC-Net:
  float32 0/1; the layout reads both).
* Empty lists are not written (a partial download gives partial splits).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np

from segssl.data import image_io
from segssl.data.conversion import check_target, write_lists
from segssl.data.readers import DataError
from segssl.data.resample import resize
from segssl.utils.atomic import staged_folder

Log = Callable[[str], None]

IMAGE_DIR = "Pancreas_h5"
HU_WINDOW = (-125.0, 275.0)
TARGET_SPACING = 1.0
CROP_SIZE = 96
MARGIN = 25

# MC-Net's data/Pancreas/train.list (its order: DSAIF-SEMI's partition 1_5 = the first 12 cases,
# 1_10 = the first 6) and test.list, by NIH case number.
TRAIN_CASES: tuple[int, ...] = (
    57, 18, 62, 31, 20, 17, 32, 79, 61, 64, 70, 19, 48, 76, 41, 52, 49, 71, 72, 34,
    10, 15, 77, 80, 27, 47, 22, 14, 68, 58, 7, 11, 24, 42, 82, 35, 12, 55, 75, 78,
    16, 13, 53, 23, 56, 33, 38, 30, 81, 29, 36, 44, 2, 45, 26, 65, 66, 43, 28, 63,
    69, 3,
)  # fmt: skip
TEST_CASES: tuple[int, ...] = (
    50, 59, 37, 60, 40, 74, 4, 46, 8, 54, 5, 73, 1, 39, 6, 67, 25, 51, 21, 9,
)  # fmt: skip
PARTITIONS = {"1_5": 12, "1_10": 6}  # DSAIF-SEMI partition -> data.labeled
LIST_NAMES = ("train.list", "test.list", "extra.list")

_IMAGE = re.compile(r"^(?:image|PANCREAS_)(\d{4})\.nii(?:\.gz)?$", re.IGNORECASE)
_LABEL = re.compile(r"^label(\d{4})\.nii(?:\.gz)?$", re.IGNORECASE)


def case_id(number: int) -> str:
    """``image0007`` from 7: MC-Net's case id (file ``image0007_norm.h5``)."""
    return f"image{number:04d}"


def find_files(raw_dir: Path, pattern: re.Pattern[str], what: str) -> dict[int, Path]:
    """Files matching ``pattern`` anywhere under ``raw_dir``, by case number; twice is an error."""
    found: dict[int, Path] = {}
    for path in sorted(raw_dir.rglob("*.nii*")):
        match = pattern.match(path.name)
        if not match or not path.is_file():
            continue
        number = int(match.group(1))
        if number in found:
            raise DataError(f"{what} of case {number} found twice: {found[number]} and {path}")
        found[number] = path
    return found


def find_cases(raw_dir: Path) -> dict[int, tuple[Path, Path]]:
    """(image, label) of every case, checked to have both."""
    if not raw_dir.is_dir():
        raise DataError(f"raw Pancreas-CT folder not found: {raw_dir}")
    images = find_files(raw_dir, _IMAGE, "image")
    labels = find_files(raw_dir, _LABEL, "label")
    if not labels:
        raise DataError(
            f"{raw_dir}: no labelNNNN.nii.gz files found (expected the TCIA pancreas labels)"
        )
    missing = sorted(set(labels) - set(images))
    if missing:
        raise DataError(
            f"{raw_dir}: no image for labels of cases {missing[:10]} (expected imageNNNN.nii.gz "
            "or PANCREAS_NNNN.nii.gz in HU; convert the TCIA DICOM series to NIfTI first)"
        )
    return {n: (images[n], labels[n]) for n in sorted(labels)}


def to_label_grid(image: nib.Nifti1Image, array: np.ndarray, label: nib.Nifti1Image) -> np.ndarray:
    """The image array in the label's axis order and directions (see the module docstring)."""
    source = nib.orientations.io_orientation(image.affine)
    target = nib.orientations.io_orientation(label.affine)
    if np.array_equal(source, target):
        return array
    transform = nib.orientations.ornt_transform(source, target)
    return nib.orientations.apply_orientation(array, transform)


def resampled_shape(shape: tuple[int, ...], spacing: tuple[float, ...]) -> tuple[int, ...]:
    """MC-Net's output size at 1 mm: ``int(size * spacing)`` per axis (at least 1)."""
    return tuple(max(1, int(n * s / TARGET_SPACING)) for n, s in zip(shape, spacing, strict=True))


def window(image: np.ndarray) -> np.ndarray:
    """Clip to the abdominal window and scale it to [0, 1] (float64)."""
    low, high = HU_WINDOW
    return (np.clip(image.astype(np.float64), low, high) - low) / (high - low)


def crop_box(label: np.ndarray, margin: int = MARGIN) -> tuple[int, int, int, int]:
    """MC-Net's x/y crop (x0, x1, y0, y1) around the label, end-exclusive as its slicing."""
    xs, ys = np.nonzero(label.any(axis=2))
    box = []
    for low, high, size in (
        (xs.min(), xs.max(), label.shape[0]),
        (ys.min(), ys.max(), label.shape[1]),
    ):
        pad = max(CROP_SIZE - int(high - low), 0) // 2
        box += [max(int(low) - pad - margin, 0), min(int(high) + pad + margin, size)]
    return box[0], box[1], box[2], box[3]


def convert_case(image_path: Path, label_path: Path, margin: int = MARGIN) -> dict:
    """One case: read, align, resample, window, crop, z-score. Returns the arrays and attrs."""
    label_nii, label = image_io.read_nifti(label_path, dtype=None, ndims=(3,))
    image_nii, image = image_io.read_nifti(image_path, ndims=(3,))
    image = to_label_grid(image_nii, image, label_nii)
    if image.shape != label.shape:
        raise DataError(
            f"{label_path}: shape {label.shape} != image shape {image.shape} of {image_path} "
            "(after putting the image in the label's orientation)"
        )
    values = np.unique(label)
    if not set(values.tolist()) <= {0, 1} or 1 not in values:
        raise DataError(
            f"{label_path}: label values {values[:10].tolist()}, expected 0 background and "
            "1 pancreas (with some pancreas voxels)"
        )
    spacing = tuple(float(z) for z in label_nii.header.get_zooms()[:3])
    shape = resampled_shape(label.shape, spacing)
    image = resize(image.astype(np.float32), shape, "linear")
    label = resize(label.astype(np.uint8), shape, "nearest")
    if not label.any():
        raise DataError(f"{label_path}: the pancreas vanished when resampling to 1 mm")
    x0, x1, y0, y1 = crop_box(label, margin)
    cropped = window(image)[x0:x1, y0:y1]
    normalised = image_io.normalise(cropped, "zscore", image_path)
    return {
        "image": normalised,
        "label": np.ascontiguousarray(label[x0:x1, y0:y1]),
        "spacing": np.full(3, TARGET_SPACING),
        "crop": np.asarray([x0, x1, y0, y1]),
    }


def build_lists(numbers: list[int]) -> dict[str, list[str]]:
    """train/test in MC-Net's order (cases present), extra for the rest; empty lists dropped."""
    known = set(TRAIN_CASES) | set(TEST_CASES)
    lists = {
        "train.list": [case_id(n) for n in TRAIN_CASES if n in numbers],
        "test.list": [case_id(n) for n in TEST_CASES if n in numbers],
        "extra.list": [case_id(n) for n in sorted(numbers) if n not in known],
    }
    return {name: ids for name, ids in lists.items() if ids}


def prepare_pancreas(
    raw_dir: Path | str,
    out_dir: Path | str,
    *,
    overwrite: bool = False,
    margin: int = MARGIN,
    log: Log | None = None,
) -> dict[str, int]:
    """Convert ``raw_dir`` into ``out_dir``; returns the number of ids in each list written.
    Nothing appears at ``out_dir`` unless every case converts."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if isinstance(margin, bool) or not isinstance(margin, int) or margin < 0:
        raise DataError(f"margin={margin!r}: expected an int >= 0 (voxels)")
    check_target(out_dir, raw_dir, overwrite, image_dir=IMAGE_DIR, list_names=LIST_NAMES)
    cases = find_cases(raw_dir)
    with staged_folder(out_dir, replace=True) as staging:
        (staging / IMAGE_DIR).mkdir()
        for number, (image_path, label_path) in cases.items():
            if log:
                log(f"{case_id(number)} <- {image_path.name}, {label_path.name}")
            case = convert_case(image_path, label_path, margin)
            image_io.write_h5_case(
                staging / IMAGE_DIR / f"{case_id(number)}_norm.h5",
                case["image"],
                case["label"],
                spacing=case["spacing"],
                crop=case["crop"],
                source=image_path.name,
            )
        lists = build_lists(list(cases))
        counts = write_lists(staging, lists)
    return counts
