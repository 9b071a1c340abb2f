"""Pack an SSL4MIS-layout ACDC folder small enough to travel with a device call, losslessly.

A device call carries only the checkout (64 MiB in all, wheels included); the shared ACDC folder
is 107 MiB of gzip-compressed float32, and float16 with gzip would still be about 85 MiB (the
rounded intensities hardly compress). But SSL4MIS stores each volume min-max normalised from the
scanner's integers, so every image is ``k / S`` exactly, with integer levels ``k`` and one
integer scale ``S`` (max - min of the raw volume, about 250 for most volumes, a few thousand for
some). The archive stores the levels as 2-D differences (``k - left - up + up-left``, inverted by
two cumulative sums), zigzag-coded, split into byte planes and LZMA-compressed (Python's
standard library): 46.0 MiB for ACDC's 1312 training slices and 20 val volumes, about what the
order-0 entropy of a MED predictor's residuals allows (measured on a sample of slices).
Unpacking gives back the very float32 arrays: each array's SHA-256 is stored at packing and
checked at unpacking; an image not of that form is stored as raw bytes (counted in the pack's
message).

    python scripts/pack_acdc.py pack                      # ../shared/data/ACDC -> .gpu/ACDC.h5
    python scripts/pack_acdc.py unpack --dest /tmp/acdc   # on the device: the SSL4MIS folder
    python -m segssl train +experiment=acdc data.root=/tmp/acdc ...

Packed: every file that ``train_slices.list``, ``val.list`` and ``test.list`` (those present)
name, and all ``*.list`` files of the folder; nothing else (README, checksums, the volumes of
``train.list``). The archive is one HDF5 file, an index and the LZMA blobs (``.gpu/`` is
git-ignored; scripts/gpu_protocol.sh says how to carry it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from any folder, installed or not

from segssl.data.layouts.ssl4mis import SPLIT_LISTS, SSL4MISLayout  # noqa: E402
from segssl.data.readers import DataError, read_list  # noqa: E402

FORMAT = "segssl-acdc-pack-3"
DEFAULT_SOURCE = ROOT.parent / "shared" / "data" / "ACDC"
DEFAULT_ARCHIVE = ROOT / ".gpu" / "ACDC.h5"
MAX_LEVEL = np.iinfo(np.uint16).max
LZMA_PRESET = 9


def digest(array: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and bytes: what unpacking must give back."""
    h = hashlib.sha256(f"{array.dtype.str}|{array.shape}|".encode())
    h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def from_levels(levels: np.ndarray, scale: float) -> np.ndarray:
    """The float32 image of ``levels`` and ``scale``: the one formula pack and unpack use."""
    return (levels.astype(np.float64) / scale).astype(np.float32)


def find_levels(image: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Integer levels and scale with ``from_levels(levels, scale) == image`` bit for bit, or None.

    The scale is 1 / the smallest gap between intensities (a multiple of it when the image lacks
    neighbouring levels: a few are tried); levels must fit uint16."""
    if image.dtype != np.float32 or image.ndim < 2 or image.size == 0:
        return None
    if not np.isfinite(image).all() or image.min() < 0:
        return None
    values = np.unique(image)
    gaps = np.diff(values.astype(np.float64))
    base = round(1.0 / gaps.min()) if gaps.size else 1
    candidates = [base * m for m in range(1, 9)] + [base - 1, base + 1]
    for scale in candidates:
        if scale < 1 or scale > MAX_LEVEL:
            continue
        levels = np.rint(image.astype(np.float64) * scale).astype(np.int64)
        if levels.max() > MAX_LEVEL:
            continue
        if np.array_equal(from_levels(levels, scale).view(np.uint32), image.view(np.uint32)):
            return levels, float(scale)
    return None


def encode_levels(levels: np.ndarray) -> tuple[bytes, int]:
    """2-D differences over the last two axes, zigzag, byte planes, LZMA; and the plane count."""
    residual = np.diff(np.diff(levels, axis=-2, prepend=0), axis=-1, prepend=0)
    zigzag = ((residual << 1) ^ (residual >> 63)).astype(np.uint64)
    planes = max(1, (int(zigzag.max()).bit_length() + 7) // 8)
    stream = b"".join(
        ((zigzag >> (8 * i)) & 0xFF).astype(np.uint8).tobytes() for i in range(planes)
    )
    return lzma.compress(stream, preset=LZMA_PRESET), planes


def decode_levels(blob: bytes, planes: int, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of ``encode_levels``."""
    stream = np.frombuffer(lzma.decompress(blob), dtype=np.uint8).reshape(planes, -1)
    zigzag = np.zeros(stream.shape[1], dtype=np.int64)
    for i in range(planes):
        zigzag |= stream[i].astype(np.int64) << (8 * i)
    residual = (zigzag >> 1) ^ -(zigzag & 1)
    return residual.reshape(shape).cumsum(axis=-1).cumsum(axis=-2)


def needed_files(source: Path) -> list[str]:
    """Paths (relative to ``source``) of every file the present split lists name."""
    layout = SSL4MISLayout(source)
    layout.check_splits()
    files: list[str] = []
    for split in SPLIT_LISTS:
        if layout.has_split(split):
            for path in layout.check_files(split):
                files.append(path.relative_to(source).as_posix())
    if not files:
        raise DataError(f"{source}: no split list names a file ({sorted(SPLIT_LISTS.values())})")
    return files


def attr_value(value: object) -> dict:
    """An h5 attribute as JSON (strings as they are, numbers as an array with its dtype)."""
    if isinstance(value, str | bytes):
        return {"str": value if isinstance(value, str) else value.decode()}
    array = np.asarray(value)
    return {"dtype": array.dtype.str, "value": array.tolist()}


def attr_restore(entry: dict) -> object:
    return entry["str"] if "str" in entry else np.asarray(entry["value"], dtype=entry["dtype"])


def encode(args: tuple[Path, str]) -> tuple[dict, list[bytes]]:
    """One source file: its index entry and the LZMA blob of each array (worker process)."""
    source, rel = args
    entry: dict = {"rel": rel, "arrays": {}, "raw_images": 0}
    blobs: list[bytes] = []
    with h5py.File(source / rel, "r") as f:
        entry["attrs"] = {k: attr_value(f.attrs[k]) for k in f.attrs}
        for key in f:
            array = f[key][()]
            meta = {"sha256": digest(array), "dtype": array.dtype.str, "shape": list(array.shape)}
            found = find_levels(array) if key == "image" else None
            if found is not None:
                levels, meta["scale"] = found
                blob, meta["planes"] = encode_levels(levels)
            else:
                blob = lzma.compress(np.ascontiguousarray(array).tobytes(), preset=LZMA_PRESET)
                entry["raw_images"] += key == "image"
            meta["length"] = len(blob)
            entry["arrays"][key] = meta
            blobs.append(blob)
    return entry, blobs


def pack(source: Path, archive: Path, workers: int) -> int:
    """Write ``archive`` from ``source``; returns its size in bytes.

    The archive is an HDF5 file with two datasets: ``blobs`` (every array's LZMA blob, one
    after the other) and ``index`` (JSON: the list files, and per file its attributes and per
    array the blob's offset and length, dtype, shape, SHA-256 and how it was coded). One index
    instead of a group per file: 1332 groups with their attributes took 3.8 MiB."""
    files = needed_files(source)
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_name(archive.name + ".tmp")
    start = time.perf_counter()
    index: dict = {"format": FORMAT, "source": str(source), "lists": {}, "files": []}
    chunks: list[bytes] = []
    offset = 0

    def add(blob: bytes) -> int:
        nonlocal offset
        chunks.append(blob)
        offset += len(blob)
        return offset - len(blob)

    for path in sorted(source.glob("*.list")):
        blob = path.read_bytes()
        index["lists"][path.name] = {"offset": add(blob), "length": len(blob)}
    jobs = [(source, rel) for rel in files]
    with ProcessPoolExecutor(workers) if workers > 1 else nullcontext() as pool:
        encoded = pool.map(encode, jobs, chunksize=8) if pool else map(encode, jobs)
        for entry, blobs in encoded:
            for meta, blob in zip(entry["arrays"].values(), blobs, strict=True):
                meta["offset"] = add(blob)
            index["files"].append(entry)
    raw = sum(entry.pop("raw_images") for entry in index["files"])
    with h5py.File(tmp, "w") as out:
        out.create_dataset("blobs", data=np.frombuffer(b"".join(chunks), dtype=np.uint8))
        # written last: an archive without its index is not complete
        out.create_dataset("index", data=np.frombuffer(json.dumps(index).encode(), np.uint8))
    tmp.replace(archive)
    size = archive.stat().st_size
    print(
        f"packed {len(files)} files of {source} into {archive} in "
        f"{time.perf_counter() - start:.0f} s: {size / 2**20:.1f} MiB "
        f"({raw} image(s) not integer levels, stored as raw bytes)",
        flush=True,
    )
    return size


def read_index(f: h5py.File, archive: Path) -> dict:
    """The archive's index; refuses an incomplete or foreign archive."""
    if "index" not in f or "blobs" not in f:
        raise DataError(f"{archive}: not a complete {FORMAT} archive (pack it again)")
    index = json.loads(f["index"][()].tobytes())
    if index.get("format") != FORMAT:
        raise DataError(f"{archive}: format {index.get('format')!r}, expected {FORMAT!r}")
    return index


def decode(meta: dict, blob: bytes, where: str) -> np.ndarray:
    """One array from its blob, checked against its packed SHA-256."""
    shape = tuple(meta["shape"])
    try:
        if "scale" in meta:
            levels = decode_levels(blob, int(meta["planes"]), shape)
            array = from_levels(levels, float(meta["scale"]))
        else:
            data = lzma.decompress(blob)
            array = np.frombuffer(data, dtype=np.dtype(meta["dtype"])).reshape(shape)
    except (lzma.LZMAError, ValueError) as err:
        raise DataError(f"{where} is damaged in the archive ({err})") from err
    if array.dtype.str != meta["dtype"] or digest(array) != meta["sha256"]:
        raise DataError(f"{where} does not unpack exactly (SHA-256 differs)")
    return array


def write_file(args: tuple[Path, str, dict, dict[str, bytes]]) -> str:
    """Decode one file's arrays and write its h5 (worker process)."""
    dest, archive_name, entry, blobs = args
    path = dest / entry["rel"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as out:
        for key, value in entry["attrs"].items():
            out.attrs[key] = attr_restore(value)
        for key, meta in entry["arrays"].items():
            where = f"{archive_name}: {entry['rel']}/{key}"
            out.create_dataset(key, data=decode(meta, blobs[key], where))
    return entry["rel"]


def unpack(archive: Path, dest: Path, workers: int = 1) -> int:
    """Rebuild the SSL4MIS folder (float32 images, uncompressed for fast reads), decoding in
    ``workers`` processes; returns the number of files written."""
    if not archive.is_file():
        raise DataError(f"archive not found: {archive} (run scripts/pack_acdc.py pack)")
    start = time.perf_counter()
    dest.mkdir(parents=True, exist_ok=True)
    with h5py.File(archive, "r") as f:
        index = read_index(f, archive)
        blobs = f["blobs"][()]  # one read: about 45 MiB

    def blob(meta: dict) -> bytes:
        return blobs[meta["offset"] : meta["offset"] + meta["length"]].tobytes()

    for name, meta in index["lists"].items():
        (dest / name).write_bytes(blob(meta))
    jobs = [
        (dest, str(archive), entry, {key: blob(m) for key, m in entry["arrays"].items()})
        for entry in index["files"]
    ]
    with ProcessPoolExecutor(workers) if workers > 1 else nullcontext() as pool:
        written = list(pool.map(write_file, jobs, chunksize=16) if pool else map(write_file, jobs))
    read_list(dest / SPLIT_LISTS["train"])  # the unpacked folder has its training list
    print(
        f"unpacked {len(written)} files into {dest} in {time.perf_counter() - start:.0f} s "
        "(exact: every array's SHA-256 matches the source's)",
        flush=True,
    )
    return len(written)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="source folder -> archive")
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    p.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    p.add_argument("--workers", type=int, default=2)
    u = sub.add_parser("unpack", help="archive -> SSL4MIS folder")
    u.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    u.add_argument("--dest", type=Path, required=True)
    u.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 16))
    args = parser.parse_args(argv)
    try:
        if args.command == "pack":
            pack(args.source, args.archive, args.workers)
        else:
            unpack(args.archive, args.dest, args.workers)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
