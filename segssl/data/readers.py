"""What every dataset layout shares (``segssl.data.layouts``): the error a bad input raises,
a read sample, split lists and their checks, and the checks of a sample's arrays.

Everything is checked when read, so a bad file stops the run before training with a message
naming the file and the problem. The split lists are checked together (``check_split_lists``,
used by every layout): no id twice in a list, no case in two lists.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np


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
