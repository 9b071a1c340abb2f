"""Pre-computed filtered views (``filter.cache=true``).

The DSAIF filter commutes exactly with flips, 90-degree rotations and strictly increasing
intensity maps such as gamma (up to the uint8 quantisation), so each training image can be
filtered once, before training, and the random transforms applied afterwards to the raw and the
filtered images alike. What does not commute exactly: resizing, interpolated rotation and crop
borders (the filter then sees the native-resolution image rather than the resized one);
``scripts/bench_filter.py`` measures the mean absolute difference against filtering on the fly.

The cache is a folder of one HDF5 file per key: the key hashes the data (root, item ids, file
sizes and modification times), the filter parameters and the filter code's version, so any
change makes a new cache instead of silently reusing a stale one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

# Bump when the filter's output changes, so that old caches are not reused.
FILTER_CODE_VERSION = "dsaif-1"

Precompute = Callable[[np.ndarray], dict[str, np.ndarray]]


def cache_key(params: dict[str, Any], files: Sequence[Path]) -> str:
    """A digest of the filter parameters, the code version and the files' identities."""
    digest = hashlib.sha256()
    digest.update(
        json.dumps(
            {"params": params, "code": FILTER_CODE_VERSION}, sort_keys=True, default=str
        ).encode()
    )
    for path in files:
        stat = path.stat()
        digest.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def _compute(args: tuple[Precompute, np.ndarray]) -> dict[str, np.ndarray]:
    precompute, image = args
    return precompute(image)


def compute_views(
    precompute: Precompute, images: Sequence[np.ndarray], num_workers: int
) -> list[dict[str, np.ndarray]]:
    """Filter every image, in parallel processes, with a progress bar."""
    jobs = [(precompute, image) for image in images]
    progress = dict(total=len(jobs), desc="DSAIF view cache", unit="img", mininterval=2.0)
    if num_workers <= 1:
        return [_compute(job) for job in tqdm(jobs, **progress)]
    with ProcessPoolExecutor(max_workers=num_workers) as pool:
        return list(tqdm(pool.map(_compute, jobs, chunksize=8), **progress))


def load_or_build(
    cache_dir: Path,
    key: str,
    items: Sequence[dict],
    precompute: Precompute,
    num_workers: int,
) -> list[dict[str, np.ndarray]]:
    """The cached views of ``items`` (dicts with ``case`` and ``image``), built if absent."""
    path = Path(cache_dir) / f"{key}.h5"
    if path.is_file():
        try:
            return _read(path, [item["case"] for item in items])
        except (OSError, KeyError) as err:
            log.warning("View cache %s is unreadable (%s); rebuilding it.", path, err)
    log.info("Building the view cache %s for %d images", path, len(items))
    views = compute_views(precompute, [item["image"] for item in items], num_workers)
    _write(path, [item["case"] for item in items], views)
    return views


def _write(path: Path, cases: Sequence[str], views: Sequence[dict[str, np.ndarray]]) -> None:
    """Write to a temporary file and rename: a crash never leaves a cache that looks complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with h5py.File(tmp, "w") as f:
        for case, arrays in zip(cases, views, strict=True):
            group = f.create_group(case)
            for name, array in arrays.items():
                group.create_dataset(name, data=array)
    os.replace(tmp, path)


def _read(path: Path, cases: Sequence[str]) -> list[dict[str, np.ndarray]]:
    with h5py.File(path, "r") as f:
        return [{name: f[case][name][()] for name in f[case]} for case in cases]
