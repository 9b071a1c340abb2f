"""The synthetic dataset on disk, in the SSL4MIS ACDC layout: which patients go to which split,
the files written, and a writer that never leaves a half dataset that looks complete."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from segssl.data.image_io import write_h5_case
from segssl.data.synthetic.anatomy import (
    ED_FRAME,
    ES_FRAME,
    FIELD_OF_VIEW_MM,
    SLICE_THICKNESS_MM,
    sample_anatomy,
)
from segssl.data.synthetic.rendering import make_phantom_volume
from segssl.utils.atomic import staged_folder

GENERATOR_VERSION = 1
STAMP_NAME = "synthetic.json"
_LAYOUT_NAMES = {"data", "train_slices.list", "train.list", "val.list", "test.list", STAMP_NAME}

# ----------------------------------------------------------------------------- dataset on disk


@dataclass(frozen=True)
class SyntheticParams:
    """Arguments of :func:`ensure_synthetic_dataset`; with the version they form the stamp."""

    num_train_patients: int
    num_val_patients: int
    num_test_patients: int
    image_size: int
    slices_per_volume: int
    seed: int

    def validate(self) -> None:
        """Reject values that cannot make a dataset, naming the argument."""
        minimum = {
            "num_train_patients": 1,
            "num_val_patients": 0,
            "num_test_patients": 0,
            "image_size": 16,
            "slices_per_volume": 1,
            "seed": 0,
        }
        for name, low in minimum.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.num_patients > 999:
            raise ValueError(f"at most 999 patients in total (ids are 3 digits), got {self}")

    @property
    def num_patients(self) -> int:
        """Total patient count over the three splits."""
        return self.num_train_patients + self.num_val_patients + self.num_test_patients

    def stamp(self) -> dict[str, object]:
        """Content of ``synthetic.json``: reuse the folder only when this matches exactly."""
        params = {key: int(value) for key, value in asdict(self).items()}
        return {"generator": "segssl.synthetic", "version": GENERATOR_VERSION, "params": params}


def patient_id(index: int) -> str:
    """ACDC-style patient id, 1-based: ``patient001``."""
    return f"patient{index + 1:03d}"


def volume_ids(patient: str) -> list[str]:
    """The two frame volumes of a patient: ED-like ``frame01`` and ES-like ``frame02``."""
    return [f"{patient}_frame{frame:02d}" for frame in (ED_FRAME, ES_FRAME)]


def split_patients(params: SyntheticParams) -> dict[str, list[str]]:
    """Disjoint patient ids: training first, then validation, then test."""
    ids = [patient_id(i) for i in range(params.num_patients)]
    n_train, n_val = params.num_train_patients, params.num_val_patients
    return {
        "train": ids[:n_train],
        "val": ids[n_train : n_train + n_val],
        "test": ids[n_train + n_val :],
    }


def list_files(params: SyntheticParams) -> dict[str, list[str]]:
    """Content of each split list file; empty splits get no file."""
    splits = split_patients(params)
    train_volumes = [v for p in splits["train"] for v in volume_ids(p)]
    depth = params.slices_per_volume
    lists = {
        "train_slices.list": [f"{v}_slice_{k}" for v in train_volumes for k in range(1, depth + 1)],
        "train.list": train_volumes,
        "val.list": [v for p in splits["val"] for v in volume_ids(p)],
        "test.list": [v for p in splits["test"] for v in volume_ids(p)],
    }
    return {name: ids for name, ids in lists.items() if ids}


def expected_files(params: SyntheticParams) -> list[str]:
    """Every file a complete dataset holds, relative to the root."""
    lists = list_files(params)
    volumes = [v for name in ("train.list", "val.list", "test.list") for v in lists.get(name, [])]
    files = [STAMP_NAME, *lists]
    files += [f"data/{v}.h5" for v in volumes]
    files += [f"data/slices/{s}.h5" for s in lists["train_slices.list"]]
    return files


def _write_patient(folder: Path, params: SyntheticParams, index: int, with_slices: bool) -> None:
    """Both frames of one patient, plus their slice files for training patients."""
    patient_rng = np.random.default_rng([params.seed, index])
    anatomy = sample_anatomy(patient_rng)
    pixel = FIELD_OF_VIEW_MM / (anatomy.zoom * params.image_size)
    spacing = (SLICE_THICKNESS_MM, pixel, pixel)
    for frame, case in zip((ED_FRAME, ES_FRAME), volume_ids(patient_id(index)), strict=True):
        rng = np.random.default_rng([params.seed, index, frame])
        image, label = make_phantom_volume(
            rng, params.image_size, params.slices_per_volume, frame, anatomy
        )
        write_h5_case(
            folder / "data" / f"{case}.h5", image, label, spacing=np.asarray(spacing, np.float64)
        )
        if with_slices:
            _write_slices(folder / "data" / "slices", case, image, label)


def _write_slices(folder: Path, case: str, image: np.ndarray, label: np.ndarray) -> None:
    """Slice files ``<case>_slice_<k>.h5`` with k 1-based: slice_k = volume[k - 1]."""
    for k in range(1, image.shape[0] + 1):
        write_h5_case(folder / f"{case}_slice_{k}.h5", image[k - 1], label[k - 1])


def write_dataset(folder: Path, params: SyntheticParams) -> None:
    """Write the whole dataset into ``folder``; the stamp goes last, marking completion."""
    (folder / "data" / "slices").mkdir(parents=True, exist_ok=True)
    train = params.num_train_patients
    for index in range(params.num_patients):
        _write_patient(folder, params, index, with_slices=index < train)
    for name, ids in list_files(params).items():
        (folder / name).write_text("".join(f"{i}\n" for i in ids))
    (folder / STAMP_NAME).write_text(json.dumps(params.stamp(), indent=2, sort_keys=True) + "\n")


def is_complete(root: Path, params: SyntheticParams) -> bool:
    """True when the stamp matches these parameters and every expected file exists."""
    try:
        stamp = json.loads((root / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return False
    if stamp != params.stamp():
        return False
    return all((root / name).is_file() for name in expected_files(params))


def _check_replaceable(root: Path) -> None:
    """Refuse to replace a path that is not (a version or a fragment of) our dataset."""
    if not root.exists():
        return
    if not root.is_dir():
        raise ValueError(f"synthetic dataset root {root} exists and is not a directory")
    foreign = sorted(p.name for p in root.iterdir() if p.name not in _LAYOUT_NAMES)
    if foreign:
        raise ValueError(
            f"synthetic dataset root {root} holds files that are not part of a synthetic dataset "
            f"({', '.join(foreign[:5])}); refusing to overwrite it: choose another root"
        )


@contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Serialise writers of one root across processes (no-op where fcntl is unavailable)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_leftovers(root: Path) -> None:
    """Delete temp/old folders of crashed writers (safe: called while holding the lock)."""
    for pattern in (f".{root.name}.*.staging", f".{root.name}.*.old"):
        for path in root.parent.glob(pattern):
            shutil.rmtree(path, ignore_errors=True)


def ensure_synthetic_dataset(
    root: str | Path,
    num_train_patients: int = 16,
    num_val_patients: int = 4,
    num_test_patients: int = 4,
    image_size: int = 96,
    slices_per_volume: int = 8,
    seed: int = 0,
) -> Path:
    """Write the synthetic dataset at ``root`` unless a complete one with these arguments exists.

    Returns the absolute root. The data are a deterministic function of the arguments. Writing
    goes into a temporary sibling folder that is renamed into place once complete, under a lock
    file next to ``root``, so an interrupted or concurrent run never leaves a half dataset that
    looks complete. A stale or half-written dataset folder is replaced; a folder holding other
    files raises ``ValueError``.
    """
    params = SyntheticParams(
        num_train_patients, num_val_patients, num_test_patients, image_size, slices_per_volume, seed
    )
    params.validate()
    root = Path(root).expanduser().resolve()
    if is_complete(root, params):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(root.parent / f".{root.name}.lock"):
        if is_complete(root, params):
            return root
        _check_replaceable(root)
        _remove_leftovers(root)
        with staged_folder(root, replace=True) as staging:
            write_dataset(staging, params)
    return root
