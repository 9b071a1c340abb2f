"""Readers for the SSL4MIS h5 layout (ACDC and the built-in synthetic data share it).

Layout under ``root``::

    train_slices.list            slice ids, patient by patient (labeled = a prefix of patients)
    val.list / test.list         volume ids
    data/slices/<slice_id>.h5    2-D slice: image (H, W) float, label (H, W) uint8
    data/<volume_id>.h5          volume:    image (D, H, W) float, label (D, H, W) uint8

Everything is checked when read, so a bad file stops the run before training with a message
naming the file and the problem. The split lists are checked together (``check_split_lists``,
used by every layout): no id twice in a list, no case in two lists.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

SPLIT_LISTS = {"train": "train_slices.list", "val": "val.list", "test": "test.list"}


class DataError(ValueError):
    """Bad or missing input data; the message names the file or setting at fault."""


@dataclass
class Sample:
    """One image (2-D slice or 3-D volume) with its optional label."""

    case: str
    image: np.ndarray
    label: np.ndarray | None
    spacing: tuple[float, ...] | None = None


def list_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, id) of each non-blank line of a split list, ids stripped of whitespace."""
    lines = path.read_text().splitlines()
    return [(n, line.strip()) for n, line in enumerate(lines, start=1) if line.strip()]


def read_list(path: Path) -> list[str]:
    """Read a split list (one id per line); an absent or empty list is an error naming it."""
    if not path.is_file():
        raise DataError(f"split list not found: {path}")
    ids = [item for _, item in list_lines(path)]
    if not ids:
        raise DataError(f"split list is empty: {path}")
    return ids


def check_split_lists(
    lists: Mapping[str, Path], *, case_of: Callable[[str], str] = str, unit: str = "case"
) -> None:
    """Refuse split lists that would count a case twice or leak it across splits.

    A line listed twice in one list is trained on (or evaluated) twice and counted as two cases;
    a case in two lists is trained on and also selects the checkpoint or is tested on. Either
    is a DataError naming the case, the list file(s) and the lines. ``lists`` maps split names
    to list files (absent files are skipped, a file under two names is read once); ids are
    compared exactly within a list and as ``case_of(id)`` across lists, because a layout may
    list slices in one list and volumes in another (SSL4MIS: compared by patient).
    """
    read: dict[Path, list[tuple[int, str]]] = {}
    for path in lists.values():
        if path not in read and path.is_file():
            read[path] = list_lines(path)
    for path, lines in read.items():
        first: dict[str, int] = {}
        for number, item in lines:
            if item in first:
                raise DataError(
                    f"{path}: {item!r} is listed twice (lines {first[item]} and {number}); "
                    "each id may appear once in a split list (a repeated line is counted, "
                    "trained on and evaluated twice): remove one"
                )
            first[item] = number
    where: dict[str, tuple[Path, int, str]] = {}  # case -> its first list, line and id
    for path, lines in read.items():
        here: dict[str, tuple[Path, int, str]] = {}
        for number, item in lines:
            here.setdefault(case_of(item), (path, number, item))
        shared = [case for case in here if case in where]
        if shared:
            case = shared[0]
            (path_a, line_a, id_a), (path_b, line_b, id_b) = where[case], here[case]
            more = f" ({len(shared)} {unit}s of {path_b.name} in all)" if len(shared) > 1 else ""
            raise DataError(
                f"{unit} {case!r} is in two split lists: {path_a} (line {line_a}: {id_a}) and "
                f"{path_b} (line {line_b}: {id_b}){more}; a {unit} in two splits is trained on "
                f"or selects the checkpoint and is also evaluated: keep each {unit} in one list"
            )
        where.update(here)


def require_files(list_path: Path, paths: list[Path]) -> list[Path]:
    """``paths`` if they all exist, else one error naming the list and the missing files."""
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:3])
        raise DataError(f"{list_path} names {len(missing)} missing file(s), e.g. {shown}")
    return paths


def patient_of(case_id: str) -> str:
    """Patient id of a slice or volume id (``patient001_frame01_slice_3`` -> ``patient001``)."""
    return case_id.split("_")[0]


def patients_in_order(slice_ids: list[str]) -> list[str]:
    """Patients in order of first appearance, as SSL4MIS takes its labeled subset."""
    seen: dict[str, None] = {}
    for slice_id in slice_ids:
        seen.setdefault(patient_of(slice_id), None)
    return list(seen)


def split_labeled(slice_ids: list[str], num_labeled_patients: int) -> tuple[list[str], list[str]]:
    """Split slices patient-wise: all slices of the first N patients are labeled, the rest not."""
    patients = patients_in_order(slice_ids)
    if num_labeled_patients < 1 or num_labeled_patients > len(patients):
        raise DataError(
            f"data.labeled={num_labeled_patients} but the training list has {len(patients)} "
            f"patients; expected 1 <= data.labeled <= {len(patients)}"
        )
    chosen = set(patients[:num_labeled_patients])
    labeled = [s for s in slice_ids if patient_of(s) in chosen]
    unlabeled = [s for s in slice_ids if patient_of(s) not in chosen]
    return labeled, unlabeled


def load_h5(
    path: Path,
    *,
    num_classes: int,
    require_label: bool = True,
    expected_ndim: int | None = None,
) -> Sample:
    """Load and check one h5 sample: keys, dimensions, finiteness, label range and shape."""
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    try:
        with h5py.File(path, "r") as f:
            if "image" not in f:
                raise DataError(f"{path}: missing h5 key 'image' (keys: {sorted(f.keys())})")
            image = np.asarray(f["image"][()], dtype=np.float32)
            label = None
            if "label" in f:
                label = np.asarray(f["label"][()])
            elif require_label:
                raise DataError(f"{path}: missing h5 key 'label' (keys: {sorted(f.keys())})")
            spacing = tuple(float(s) for s in f.attrs["spacing"]) if "spacing" in f.attrs else None
    except OSError as err:
        raise DataError(f"{path}: cannot read as HDF5 ({err})") from err
    check_sample(path, image, label, num_classes=num_classes, expected_ndim=expected_ndim)
    return Sample(case=path.stem, image=image, label=label, spacing=spacing)


def check_sample(
    path: Path | str,
    image: np.ndarray,
    label: np.ndarray | None,
    *,
    num_classes: int,
    expected_ndim: int | None = None,
) -> None:
    """Raise a DataError naming ``path`` if the arrays cannot be trained on."""
    if expected_ndim is not None and image.ndim != expected_ndim:
        raise DataError(f"{path}: 'image' has shape {image.shape}, expected {expected_ndim}-D")
    if not np.isfinite(image).all():
        raise DataError(f"{path}: 'image' contains NaN or inf values")
    if label is None:
        return
    if label.shape != image.shape:
        raise DataError(f"{path}: 'label' shape {label.shape} != 'image' shape {image.shape}")
    if label.size and (label.min() < 0 or label.max() >= num_classes):
        raise DataError(
            f"{path}: 'label' values span [{label.min()}, {label.max()}], expected classes "
            f"0..{num_classes - 1} (data.num_classes={num_classes})"
        )


class SSL4MISLayout:
    """Paths and splits of an SSL4MIS-layout folder (ACDC, synthetic): 2-D training slices,
    evaluation volumes. The only place that knows these file names."""

    train_ndim = 2

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DataError(f"data root not found: {self.root} (set data.root=PATH)")

    def list_path(self, split: str) -> Path:
        if split not in SPLIT_LISTS:
            raise DataError(f"unknown split {split!r}; expected one of {sorted(SPLIT_LISTS)}")
        return self.root / SPLIT_LISTS[split]

    def has_split(self, split: str) -> bool:
        return self.list_path(split).is_file()

    def ids(self, split: str) -> list[str]:
        """The split's ids, once all the split lists are checked together (by patient)."""
        ids = read_list(self.list_path(split))
        self.check_splits()
        return ids

    def check_splits(self) -> None:
        """Slices of train_slices.list and volumes of val/test.list are compared by patient."""
        lists = {split: self.list_path(split) for split in SPLIT_LISTS}
        check_split_lists(lists, case_of=patient_of, unit="patient")

    def path(self, split: str, item_id: str) -> Path:
        """Training items are slices, evaluation items volumes."""
        if split == "train":
            return self.root / "data" / "slices" / f"{item_id}.h5"
        return self.root / "data" / f"{item_id}.h5"

    def check_files(self, split: str) -> list[Path]:
        """All files a split names, checked to exist up front (one error lists the missing)."""
        return require_files(self.list_path(split), [self.path(split, i) for i in self.ids(split)])

    def load(self, split: str, item_id: str, *, num_classes: int, require_label: bool) -> Sample:
        ndim = self.train_ndim if split == "train" else 3
        sample = load_h5(
            self.path(split, item_id),
            num_classes=num_classes,
            require_label=require_label,
            expected_ndim=ndim,
        )
        sample.case = item_id
        return sample


# the other layouts build on this module, so they are named here and imported on use
LAYOUTS: dict[str, type | str] = {
    "ssl4mis": SSL4MISLayout,
    "uamt": "segssl.data.layouts.uamt.UAMTLayout",
    "folder": "segssl.data.layouts.folder.FolderLayout",
}


def make_layout(name: str, root: str | Path, **options: Any):
    """The reader of a dataset layout by name (``data.layout``) with its ``data.layout_options``."""
    if name not in LAYOUTS:
        raise DataError(f"data.layout={name!r} is unknown; expected one of {sorted(LAYOUTS)}")
    layout = LAYOUTS[name]
    if isinstance(layout, str):
        module, _, cls = layout.rpartition(".")
        layout = getattr(importlib.import_module(module), cls)
    try:
        inspect.signature(layout).bind(root, **options)
    except TypeError as err:
        raise DataError(f"data.layout_options={options} do not fit layout {name!r}: {err}") from err
    return layout(root, **options)
