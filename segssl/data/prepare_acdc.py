"""Convert the official ACDC download (NIfTI) into the SSL4MIS h5 layout that segssl reads.

Why: the benchmark numbers of SSL4MIS-style papers depend on its exact preprocessing and split;
this rebuilds both from the public ACDC zip so results are comparable, without a third-party
mirror of the h5 files.

Input ``raw_dir``: ``patientXXX`` folders found at any depth (the official zip nests them under
``training/`` and ``testing/``), each holding ``Info.cfg`` (``ED: 1``, ``ES: 12``, ...),
``patientXXX_frameNN.nii.gz`` and ``patientXXX_frameNN_gt.nii.gz`` for the ED and ES frames.

Output ``out_dir`` (the layout of :mod:`segssl.data.readers`)::

    data/<volume_id>.h5                   image (D, H, W) float32 in [0, 1], label uint8,
                                          attrs: spacing (z, y, x) mm, source_frame, phase
    data/slices/<volume_id>_slice_<K>.h5  training slices, K = 1..D, slice_K = volume[K - 1]
    train_slices.list / train.list        standard training patients, SSL4MIS patient order
    val.list / test.list                  standard validation / test patients
    all_slices.list                       slice ids of every train/val/test volume, sorted
    extra.list                            volumes of patients outside the standard split

Conventions (chosen to equal the SSL4MIS h5 files):

* Axis order: a NIfTI voxel array is (x, y, z); volumes are stored (z, y, x) =
  ``np.transpose(array, (2, 1, 0))``, which is what SimpleITK's ``GetArrayFromImage`` returned
  in SSL4MIS. So ``volume[k]`` is NIfTI slice k, rows run along NIfTI y, columns along x, and
  ``spacing`` is the NIfTI zooms reversed.
* Frame names: SSL4MIS renamed the two labelled frames, ED -> ``frame01``, ES -> ``frame02``
  (every shared volume pair has the larger LV in ``frame01``). The official frame number is
  kept in the ``source_frame`` attribute.
* Intensities: min-max normalised per volume, computed in float64, stored as float32.
* Empty lists are not written (a partial download gives partial splits).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from segssl.data import image_io
from segssl.data.conversion import check_target, write_lists
from segssl.data.readers import DataError
from segssl.utils.atomic import staged_folder

NUM_CLASSES = 4
PHASE_FRAME_IDS = {"ED": "frame01", "ES": "frame02"}

# The SSL4MIS ACDC split, by patient number. Training patients are in order of first appearance
# in its train_slices.list (so "first N labeled patients" matches: 3 -> 68 slices, 7 -> 136);
# validation patients in val.list order; test patients are the rest of 1..100, ascending.
TRAIN_PATIENTS: tuple[int, ...] = (
    99, 38, 50, 100, 58, 21, 49, 20, 72, 40, 60, 89, 4, 56, 98, 96, 31, 18, 94, 47,
    48, 55, 97, 74, 43, 41, 63, 37, 95, 54, 26, 88, 32, 69, 6, 71, 12, 73, 61, 17,
    25, 10, 57, 29, 51, 5, 36, 46, 62, 34, 76, 92, 70, 77, 67, 3, 91, 16, 14, 44,
    42, 90, 53, 27, 35, 86, 23, 9, 79, 15,
)  # fmt: skip
VAL_PATIENTS: tuple[int, ...] = (28, 85, 82, 87, 19, 30, 78, 45, 2, 39)
TEST_PATIENTS: tuple[int, ...] = (
    1, 7, 8, 11, 13, 22, 24, 33, 52, 59, 64, 65, 66, 68, 75, 80, 81, 83, 84, 93,
)  # fmt: skip
STANDARD_SPLIT: dict[str, tuple[int, ...]] = {
    "train": TRAIN_PATIENTS,
    "val": VAL_PATIENTS,
    "test": TEST_PATIENTS,
}
LIST_NAMES = (
    "train_slices.list",
    "train.list",
    "val.list",
    "test.list",
    "all_slices.list",
    "extra.list",
)
_PATIENT_DIR = re.compile(r"^patient(\d{3})$")

Log = Callable[[str], None]


@dataclass
class Volume:
    """One converted frame, slices first, ready to write."""

    case: str
    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float]
    source_frame: int
    phase: str


def patient_name(number: int) -> str:
    """``patient007`` from 7, the ACDC folder and file prefix."""
    return f"patient{number:03d}"


def split_of(number: int) -> str:
    """Standard split of a patient: train, val, test, or extra when outside the benchmark."""
    for split, patients in STANDARD_SPLIT.items():
        if number in patients:
            return split
    return "extra"


def find_patient_dirs(raw_dir: Path) -> dict[int, Path]:
    """Patient folders anywhere under ``raw_dir``, by number; a duplicate patient is an error."""
    if not raw_dir.is_dir():
        raise DataError(f"raw ACDC folder not found: {raw_dir}")
    found: dict[int, Path] = {}
    for path in sorted(raw_dir.rglob("patient*")):
        match = _PATIENT_DIR.match(path.name)
        if not match or not path.is_dir():
            continue
        number = int(match.group(1))
        if number in found:
            raise DataError(f"patient {path.name} found twice: {found[number]} and {path}")
        found[number] = path
    if not found:
        raise DataError(f"{raw_dir}: no patientXXX folders found (expected the ACDC download)")
    return dict(sorted(found.items()))


def read_info(path: Path) -> dict[str, str]:
    """``key: value`` pairs of an ACDC ``Info.cfg``."""
    if not path.is_file():
        raise DataError(f"missing {path} (each ACDC patient folder needs its Info.cfg)")
    info: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = value.strip()
    return info


def phase_frames(info_path: Path) -> dict[str, int]:
    """Frame numbers of the ED and ES phases, from ``Info.cfg``."""
    info = read_info(info_path)
    frames: dict[str, int] = {}
    for phase in PHASE_FRAME_IDS:
        value = info.get(phase)
        if value is None or not value.isdigit():
            raise DataError(
                f"{info_path}: expected a line '{phase}: <frame number>', got {value!r}"
            )
        frames[phase] = int(value)
    return frames


def slices_first(array: np.ndarray) -> np.ndarray:
    """NIfTI (x, y, z) -> (z, y, x), the SimpleITK/SSL4MIS array order."""
    return np.ascontiguousarray(np.transpose(array, (2, 1, 0)))


def load_nifti(path: Path) -> tuple[nib.Nifti1Image, np.ndarray]:
    """A frame file and its scaled voxel data as stored (x, y, z): labels stay integers."""
    if not path.is_file():
        raise DataError(f"missing frame file {path} (named by ED/ES in Info.cfg)")
    return image_io.read_nifti(path, dtype=None, ndims=(3,))


def check_label(label: np.ndarray, path: Path) -> np.ndarray:
    """Integer classes 0..3 as uint8; anything else is an error naming the file."""
    if not np.issubdtype(label.dtype, np.integer) and not np.array_equal(label, np.round(label)):
        raise DataError(f"{path}: label values must be whole numbers 0..{NUM_CLASSES - 1}")
    values = np.unique(label)
    bad = values[(values < 0) | (values >= NUM_CLASSES)]
    if bad.size:
        raise DataError(
            f"{path}: labels outside 0..{NUM_CLASSES - 1}: {bad[:10].tolist()} "
            "(expected 0 background, 1 RV, 2 myocardium, 3 LV)"
        )
    return label.astype(np.uint8)


def load_frame(patient_dir: Path, phase: str, frame: int) -> Volume:
    """Read one ED/ES frame and its ground truth, checked and put in the stored axis order."""
    prefix = f"{patient_dir.name}_frame{frame:02d}"
    image_path = patient_dir / f"{prefix}.nii.gz"
    label_path = patient_dir / f"{prefix}_gt.nii.gz"
    image_nii, image = load_nifti(image_path)
    _, label = load_nifti(label_path)
    if image.shape != label.shape:
        raise DataError(
            f"{label_path}: shape {label.shape} != image shape {image.shape} of {image_path.name}"
        )
    zooms = tuple(float(z) for z in image_nii.header.get_zooms()[:3])
    return Volume(
        case=f"{patient_dir.name}_{PHASE_FRAME_IDS[phase]}",
        image=slices_first(image_io.normalise(image, "minmax", image_path)),
        label=slices_first(check_label(label, label_path)),
        spacing=(zooms[2], zooms[1], zooms[0]),
        source_frame=frame,
        phase=phase,
    )


def write_volume(data_dir: Path, volume: Volume) -> None:
    """``data/<case>.h5`` with the spacing (z, y, x) and where the frame came from."""
    image_io.write_h5_case(
        data_dir / f"{volume.case}.h5",
        volume.image,
        volume.label,
        spacing=np.asarray(volume.spacing, dtype=np.float64),
        source_frame=volume.source_frame,
        phase=volume.phase,
    )


def slice_ids(case: str, depth: int) -> list[str]:
    """SSL4MIS slice ids of a volume, 1-based."""
    return [f"{case}_slice_{k}" for k in range(1, depth + 1)]


def write_slices(slice_dir: Path, volume: Volume) -> None:
    """``data/slices/<case>_slice_<K>.h5`` with slice_K = volume[K - 1], as SSL4MIS."""
    depth = volume.image.shape[0]
    for index, slice_id in enumerate(slice_ids(volume.case, depth)):
        image_io.write_h5_case(
            slice_dir / f"{slice_id}.h5", volume.image[index], volume.label[index]
        )


def build_lists(depths: dict[str, int], patients: list[int]) -> dict[str, list[str]]:
    """Content of every non-empty split list, from the depth of each written volume."""

    def volumes(numbers: list[int] | tuple[int, ...]) -> list[str]:
        present = [n for n in numbers if n in patients]
        return [f"{patient_name(n)}_{f}" for n in present for f in PHASE_FRAME_IDS.values()]

    train = volumes(TRAIN_PATIENTS)
    val, test = volumes(VAL_PATIENTS), volumes(TEST_PATIENTS)
    extra = volumes(sorted(n for n in patients if split_of(n) == "extra"))
    lists = {
        "train_slices.list": [s for v in train for s in slice_ids(v, depths[v])],
        "train.list": train,
        "val.list": val,
        "test.list": test,
        "all_slices.list": sorted(s for v in train + val + test for s in slice_ids(v, depths[v])),
        "extra.list": extra,
    }
    return {name: ids for name, ids in lists.items() if ids}


def convert_patient(patient_dir: Path, data_dir: Path, with_slices: bool) -> dict[str, int]:
    """Write both frames of one patient; returns the depth of each volume written."""
    frames = phase_frames(patient_dir / "Info.cfg")
    depths: dict[str, int] = {}
    for phase, frame in frames.items():
        volume = load_frame(patient_dir, phase, frame)
        write_volume(data_dir, volume)
        if with_slices:
            write_slices(data_dir / "slices", volume)
        depths[volume.case] = volume.image.shape[0]
    return depths


def prepare_acdc(
    raw_dir: Path | str,
    out_dir: Path | str,
    *,
    overwrite: bool = False,
    all_slices: bool = False,
    log: Log | None = None,
) -> dict[str, int]:
    """Convert ``raw_dir`` into ``out_dir``; returns the number of ids in each list written.

    Slice files are written for the training patients (what SSL4MIS training reads), or for
    every volume with ``all_slices``. Nothing appears at ``out_dir`` unless all succeeds.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    check_target(out_dir, raw_dir, overwrite, image_dir="data", list_names=LIST_NAMES)
    patient_dirs = find_patient_dirs(raw_dir)
    depths: dict[str, int] = {}
    # an existing out_dir passed check_target: it is replaced only once everything is written
    with staged_folder(out_dir, replace=True) as staging:
        data_dir = staging / "data"
        (data_dir / "slices").mkdir(parents=True)
        for number, patient_dir in patient_dirs.items():
            split = split_of(number)
            if log:
                log(f"{patient_dir.name} ({split}) <- {patient_dir}")
            with_slices = all_slices or split == "train"
            depths.update(convert_patient(patient_dir, data_dir, with_slices))
        lists = build_lists(depths, list(patient_dirs))
        counts = write_lists(staging, lists)
    return counts
