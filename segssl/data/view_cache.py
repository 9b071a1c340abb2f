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

import ctypes
import hashlib
import json
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm.auto import tqdm

from segssl.utils.atomic import remove_stale_temporaries, write_with

log = logging.getLogger(__name__)

# Bump when the filter's output changes, so that old caches are not reused.
FILTER_CODE_VERSION = "dsaif-2"  # 2: float32 map back, the authors' bits
# prctl(2) option: the signal a process gets when its parent dies
PR_SET_PDEATHSIG = 1

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


def _die_with_parent(parent: int) -> None:
    """Pool initializer: a worker (about 400 MB each) must not outlive the run that started it.
    On Linux the kernel kills it when its parent dies, even by SIGKILL; Ctrl-C and SIGTERM are
    left to the parent, which terminates the pool."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)


def compute_views(
    precompute: Precompute, images: Sequence[np.ndarray], num_workers: int
) -> list[dict[str, np.ndarray]]:
    """Filter every image, in parallel processes, with a progress bar. Any exception here,
    a stop signal included, terminates the workers before it propagates."""
    jobs = [(precompute, image) for image in images]
    progress = dict(total=len(jobs), desc="DSAIF view cache", unit="img", mininterval=2.0)
    if num_workers <= 1:
        return [_compute(job) for job in tqdm(jobs, **progress)]
    # fork: the workers inherit the images without pickling them; PDEATHSIG needs it too (the
    # signal is tied to the thread that forked the worker, here the main thread)
    context = multiprocessing.get_context("fork")
    pool = context.Pool(num_workers, initializer=_die_with_parent, initargs=(os.getpid(),))
    try:
        views = list(tqdm(pool.imap(_compute, jobs, chunksize=8), **progress))
    except BaseException:
        pool.terminate()
        pool.join()
        raise
    pool.close()
    pool.join()
    return views


def load_or_build(
    cache_dir: Path,
    key: str,
    items: Sequence[dict],
    precompute: Precompute,
    num_workers: int,
) -> list[dict[str, np.ndarray]]:
    """The cached views of ``items`` (dicts with ``case`` and ``image``), built if absent.
    A cache file is only ever complete (written beside, then renamed), and one that does not
    hold exactly these cases is rebuilt rather than trusted."""
    cache_dir = Path(cache_dir)
    path = cache_dir / f"{key}.h5"
    cases = [item["case"] for item in items]
    for stale in remove_stale_temporaries(cache_dir):
        log.info("Removed %s, left by a cache build that was killed", stale)
    if path.is_file():
        try:
            return _read(path, cases)
        except (OSError, KeyError, ValueError) as err:
            log.warning("View cache %s is unreadable (%s); rebuilding it.", path, err)
    log.info("Building the view cache %s for %d images", path, len(items))
    views = compute_views(precompute, [item["image"] for item in items], num_workers)
    _write(path, cases, views)
    return views


def _write(path: Path, cases: Sequence[str], views: Sequence[dict[str, np.ndarray]]) -> None:
    """Write beside and rename: a crash never leaves a cache that looks complete."""

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            for case, arrays in zip(cases, views, strict=True):
                group = f.create_group(case)
                for name, array in arrays.items():
                    group.create_dataset(name, data=array)
            # written last: a file without it was not finished
            f.attrs["num_cases"] = len(cases)

    write_with(path, write)


def _read(path: Path, cases: Sequence[str]) -> list[dict[str, np.ndarray]]:
    with h5py.File(path, "r") as f:
        if int(f.attrs.get("num_cases", -1)) != len(f.keys()):
            raise ValueError("incomplete cache file")
        return [{name: f[case][name][()] for name in f[case]} for case in cases]
