"""Pre-computed filtered views (``filter.cache=true``), built and read one case at a time.

The DSAIF filter commutes exactly with flips, 90-degree rotations and strictly increasing
intensity maps such as gamma (up to the uint8 quantisation), so each training image can be
filtered once, before training, and the random transforms applied afterwards to the raw and the
filtered images alike. What does not commute exactly: resizing, interpolated rotation and crop
borders (the filter then sees the native-resolution image rather than the resized one);
``scripts/bench_filter.py`` measures the mean absolute difference against filtering on the fly.

Storage: one HDF5 file per key, ``<key>.h5``, holding per case one uncompressed, contiguous
dataset ``(1 + views, *shape)``: the raw image and its views stacked as channels. That layout
stays in this module: a read gives a case as named arrays, ``image`` and each view under its
own sample key (``names``, the perturbations' ``cache_key``), so the transforms and the view
makers go by name, never by channel position. The key hashes the data (root, item ids, file
sizes and modification times), the layout options that change the images, the filter parameters
and the filter code's version, so any change makes a new cache instead of silently reusing a
stale one.

Why this shape: the views of 80 LA volumes take about 20 GB, so nothing may hold all
of them. The build loads, filters and writes one case per worker at a time (workers send one
case back, the parent appends it to the file); the reader keeps only each case's byte offset
and maps the bytes of one case per read (``ViewCache.read``), so memory stays bounded by a few
cases whatever the dataset's size, and the pages live in the operating system's page cache,
shared by every loader worker and DDP rank on the machine. A file is written beside its place
and renamed into it only when complete (``format`` and ``num_cases`` attributes written last),
so a killed build leaves nothing that is later trusted; the next build removes its temporary.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import mmap
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import h5py
import numpy as np
from tqdm.auto import tqdm

from segssl.utils.atomic import remove_stale_temporaries, write_with

log = logging.getLogger(__name__)

# the sample key of the raw image; the views are stored under their own names
IMAGE_KEY = "image"
# Bump when the filter's output changes, so that old caches are not reused.
FILTER_CODE_VERSION = "dsaif-2"  # 2: float32 map back, the authors' bits
# The file format: a file of another format (e.g. the earlier groups of views) is rebuilt.
CACHE_FORMAT = "segssl-views-stacked-1"
# prctl(2) option: the signal a process gets when its parent dies
PR_SET_PDEATHSIG = 1

Precompute = Callable[[np.ndarray], dict[str, np.ndarray]]
LoadImage = Callable[[str], np.ndarray]


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


# -- reading ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Extent:
    """Where one case's stacked array lies in the cache file."""

    offset: int
    shape: tuple[int, ...]
    dtype: np.dtype


class ViewCache:
    """A complete cache file opened for lazy reads: ``read(case)`` maps that case's bytes only.

    The file stays open (a renamed-over file keeps its old content for this reader); each read
    makes its own copy-on-write memory map, released with the array, so a process holds only
    the cases it is working on, and the pages themselves are the page cache, shared by the
    processes that read the same file."""

    def __init__(self, path: Path, names: Sequence[str], extents: dict[str, Extent]) -> None:
        self.path, self.names, self.extents = Path(path), list(names), dict(extents)
        self._file = open(self.path, "rb")  # noqa: SIM115 (held for the cache's lifetime)

    @property
    def cases(self) -> list[str]:
        return list(self.extents)

    def __len__(self) -> int:
        return len(self.extents)

    def __contains__(self, case: object) -> bool:
        return case in self.extents

    def shape(self, case: str) -> tuple[int, ...]:
        return self.extents[case].shape

    def read(self, case: str) -> dict[str, np.ndarray]:
        """``case`` as sample keys: ``image`` and each view of ``names``, each ``(1, *shape)``
        (channel first, as a training item's ``image``). Views of one memory map, writable
        (copy-on-write: a transform writing into them changes private pages only)."""
        stacked = self._read_stacked(case)
        keys = [IMAGE_KEY, *self.names]
        return {key: stacked[channel : channel + 1] for channel, key in enumerate(keys)}

    def _read_stacked(self, case: str) -> np.ndarray:
        """The stored ``(1 + views, *shape)`` of ``case``: raw image, then ``names`` in order."""
        extent = self.extents[case]
        start = extent.offset - extent.offset % mmap.ALLOCATIONGRANULARITY
        length = extent.offset - start + int(np.prod(extent.shape)) * extent.dtype.itemsize
        if length == extent.offset - start:  # an empty array: nothing to map
            return np.zeros(extent.shape, extent.dtype)
        mapped = mmap.mmap(self._file.fileno(), length, access=mmap.ACCESS_COPY, offset=start)
        array = np.frombuffer(mapped, dtype=extent.dtype, offset=extent.offset - start)
        return array.reshape(extent.shape)

    def close(self) -> None:
        self._file.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._file.close()

    # loader processes started with spawn get the path and reopen it
    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "names": self.names, "extents": self.extents}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["names"], state["extents"])


def open_cache(path: Path, cases: Sequence[str]) -> ViewCache:
    """The cache at ``path`` if it is complete, of this format and holds ``cases``; else
    OSError (unreadable), ValueError (incomplete, other format, not mappable) or KeyError (a
    case missing)."""
    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != CACHE_FORMAT:
            raise ValueError(f"not a {CACHE_FORMAT} file (an older format or a damaged file)")
        if int(f.attrs.get("num_cases", -1)) != len(f.keys()):
            raise ValueError("incomplete cache file (no completion mark)")
        names = [str(n) for n in json.loads(f.attrs["names"])]
        extents = {}
        for case in cases:
            dataset = f[quote(case, safe="")]
            offset = dataset.id.get_offset()
            if offset is None or dataset.chunks is not None or not dataset.dtype.isnative:
                raise ValueError(f"case {case!r} is not stored contiguously")
            if dataset.ndim < 2 or dataset.shape[0] != 1 + len(names):
                raise ValueError(f"case {case!r} has shape {dataset.shape}, not (1 + {names}, ..)")
            extents[case] = Extent(int(offset), tuple(dataset.shape), np.dtype(dataset.dtype))
    return ViewCache(path, names, extents)


class CachedItems(Sequence):
    """Training items whose ``image`` and views (each under its own key, ``ViewCache.read``)
    are read from a ``ViewCache`` when the item is taken: the list holds case ids (and labels),
    never images, so every loader worker and the data module itself stay small;
    ``DataLoader`` and the device path index it like a list."""

    def __init__(self, items: Sequence[dict], cache: ViewCache) -> None:
        missing = [item["case"] for item in items if item["case"] not in cache]
        if missing:
            raise KeyError(f"cases {missing[:5]} are not in the view cache {cache.path}")
        read = {IMAGE_KEY, *cache.names}
        self.items = [{k: v for k, v in item.items() if k not in read} for item in items]
        self.cache = cache

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        item = self.items[index]
        return {**item, **self.cache.read(item["case"])}


# -- building ---------------------------------------------------------------------------------
# what forked workers compute: set before the pool forks, so images are never pickled to them
_JOB: tuple[LoadImage, Precompute] | None = None


def stacked_views(image: np.ndarray, precompute: Precompute) -> tuple[np.ndarray, list[str]]:
    """The raw image and its views as channels, and the views' names in channel order (the
    storage layout; ``ViewCache.read`` gives them back by name)."""
    image = np.asarray(image)
    views = precompute(image)
    names = list(views)
    if IMAGE_KEY in names:
        raise ValueError(f"a view may not be named {IMAGE_KEY!r}: that key is the raw image")
    dtype = np.result_type(image.dtype, *(v.dtype for v in views.values()))
    stacked = np.empty((1 + len(names), *image.shape), dtype=dtype)
    stacked[0] = image
    for channel, name in enumerate(names, start=1):
        if views[name].shape != image.shape:
            raise ValueError(f"view {name!r} has shape {views[name].shape}, not {image.shape}")
        stacked[channel] = views[name]
    return stacked, names


def _compute(case: str) -> tuple[str, np.ndarray, list[str]]:
    assert _JOB is not None, "view cache worker started without a job"
    load, precompute = _JOB
    stacked, names = stacked_views(load(case), precompute)
    return case, stacked, names


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
    cases: Sequence[str], load: LoadImage, precompute: Precompute, num_workers: int
) -> Iterator[tuple[str, np.ndarray, list[str]]]:
    """Yield ``(case, stacked, names)`` case by case, in completion order, with a progress bar.
    Workers load and filter one case each and hand it back as soon as it is done, so at most
    about ``num_workers`` cases are in memory. Any exception here, a stop signal or the caller
    closing the generator included, terminates the workers before it propagates."""
    global _JOB
    progress = dict(total=len(cases), desc="DSAIF view cache", unit="img", mininterval=2.0)
    if num_workers <= 1 or len(cases) <= 1:
        for case in tqdm(cases, **progress):
            yield case, *stacked_views(load(case), precompute)
        return
    # fork: the workers inherit ``load`` and ``precompute`` (and what they read) without
    # pickling; PDEATHSIG needs it too (the signal is tied to the thread that forked the worker)
    context = multiprocessing.get_context("fork")
    _JOB = (load, precompute)  # kept while the pool lives: it may fork a replacement worker
    try:
        pool = context.Pool(
            min(num_workers, len(cases)), initializer=_die_with_parent, initargs=(os.getpid(),)
        )
        try:
            yield from tqdm(pool.imap_unordered(_compute, cases, chunksize=1), **progress)
        except BaseException:
            pool.terminate()
            pool.join()
            raise
        pool.close()
        pool.join()
    finally:
        _JOB = None


def build(
    path: Path, cases: Sequence[str], load: LoadImage, precompute: Precompute, num_workers: int
) -> None:
    """Write the cache of ``cases`` to ``path``, one case at a time, beside it and renamed
    into place when complete (the completion attributes are written last)."""
    if len(set(cases)) != len(cases):
        raise ValueError(f"view cache {path}: a case is listed twice")

    def write(tmp: Path) -> None:
        names: list[str] | None = None
        with h5py.File(tmp, "w") as f:
            for case, stacked, case_names in compute_views(cases, load, precompute, num_workers):
                if names is None:
                    names = case_names
                elif case_names != names:
                    raise ValueError(f"case {case!r} has views {case_names}, others {names}")
                # contiguous and uncompressed: the reader maps its bytes in place
                f.create_dataset(quote(case, safe=""), data=np.ascontiguousarray(stacked))
                del stacked
            # written last: a file without them was not finished
            f.attrs["names"] = json.dumps(names or [])
            f.attrs["format"] = CACHE_FORMAT
            f.attrs["num_cases"] = len(cases)

    write_with(path, write)


@contextlib.contextmanager
def _build_lock(folder: Path) -> Iterator[None]:
    """Held while building into ``folder``: DDP ranks (and concurrent runs) on one machine
    build once, the others wait and then read the finished file. The folder itself is locked,
    so no lock file is left behind."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): concurrent builders only duplicate the work
        yield
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        except OSError as err:  # e.g. a network file system without locks
            log.warning("Cannot lock %s (%s): concurrent runs may build it twice", folder, err)
        yield
    finally:
        os.close(descriptor)


def open_or_build(
    cache_dir: Path,
    key: str,
    cases: Sequence[str],
    load: LoadImage,
    precompute: Precompute,
    num_workers: int,
) -> ViewCache:
    """The view cache of ``cases`` under ``key``, built if absent: ``load(case)`` gives a
    case's raw image (called once per case while building, in the worker that filters it).
    A cache file is only ever complete (written beside, then renamed), and one that is
    incomplete, of another format or without one of these cases is rebuilt rather than
    trusted."""
    cache_dir = Path(cache_dir)
    path = cache_dir / f"{key}.h5"
    for stale in remove_stale_temporaries(cache_dir):
        log.info("Removed %s, left by a cache build that was killed", stale)
    cache = _try_open(path, cases)
    if cache is not None:
        return cache
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _build_lock(cache_dir):
        cache = _try_open(path, cases, quiet=True)  # another process may have built it meanwhile
        if cache is not None:
            return cache
        log.info("Building the view cache %s for %d images", path, len(cases))
        build(path, cases, load, precompute, num_workers)
    return open_cache(path, cases)


def _try_open(path: Path, cases: Sequence[str], quiet: bool = False) -> ViewCache | None:
    if not path.is_file():
        return None
    try:
        return open_cache(path, cases)
    except (OSError, KeyError, ValueError) as err:
        if not quiet:
            log.warning("View cache %s is unreadable (%s); rebuilding it.", path, err)
        return None
