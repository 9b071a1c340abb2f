"""What every converter from an official download shares (``prepare_acdc``,
``prepare_pancreas``, ``prepare_promise12``): the output folder is refused unless it is empty or
one of ours, the split lists are written one id a line, and the scripts report alike."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from segssl.data.readers import DataError


def check_target(
    out_dir: Path, raw_dir: Path, overwrite: bool, *, image_dir: str, list_names: Iterable[str]
) -> None:
    """Refuse a non-empty ``out_dir`` unless ``overwrite``, and never one that is not ours
    (anything beside ``image_dir/`` and the converter's lists) or that holds the raw data."""
    out, raw = out_dir.resolve(), raw_dir.resolve()
    if out == raw or out in raw.parents:
        raise DataError(f"output folder {out_dir} must not contain the raw data folder {raw_dir}")
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"output path {out_dir} exists and is not a folder")
    entries = sorted(p.name for p in out_dir.iterdir()) if out_dir.is_dir() else []
    if not entries:
        return
    if not overwrite:
        raise DataError(f"output folder {out_dir} is not empty; pass --overwrite to replace it")
    ours = {image_dir, *list_names}
    foreign = [name for name in entries if name not in ours]
    if foreign:
        raise DataError(
            f"refusing to overwrite {out_dir}: it holds {foreign[:5]}, which this converter "
            f"does not write (expected only {image_dir}/ and *.list); remove it yourself"
        )


def write_lists(folder: Path, lists: Mapping[str, list[str]]) -> dict[str, int]:
    """Write each split list (one id a line) into ``folder``; returns the ids in each."""
    for name, ids in lists.items():
        (folder / name).write_text("".join(f"{i}\n" for i in ids))
    return {name: len(ids) for name, ids in lists.items()}


def run_conversion(
    convert: Callable[..., Mapping[str, int]], raw_dir: Path, out_dir: Path, **options: Any
) -> int:
    """A script's ``main``: run ``convert``; a data error is one line on stderr and exit
    status 1, success a line with the folder, the time and the ids in each list."""
    start = time.perf_counter()
    try:
        counts = convert(raw_dir, out_dir, **options)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    summary = ", ".join(f"{name}: {n}" for name, n in counts.items())
    print(f"wrote {out_dir} in {time.perf_counter() - start:.1f}s ({summary})")
    return 0
