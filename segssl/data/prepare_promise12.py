"""Convert the official PROMISE12 training data (MetaImage ``.mhd``/``.raw``) into SLC-Net's
layout, the SSL4MIS h5 layout that ``conf/data/promise12.yaml`` reads.

Why: SLC-Net's (and DSAIF's) PROMISE12 numbers depend on its 35/5/10 patient split and its
slice files; this rebuilds both from the challenge download, without a third-party mirror.

Input ``raw_dir`` (searched at any depth; the zip has ``TrainingData_Part1..3``): ``CaseNN.mhd``
with ``CaseNN_segmentation.mhd`` beside it (and the ``.raw`` files they name). Images without a
segmentation (the challenge's unlabeled test cases, also named ``CaseNN``) are skipped.

Output ``out_dir``::

    data/CaseNN.h5                  volume: image (D, H, W) float32 in [0, 1], label uint8 {0, 1},
                                    attrs: spacing (z, y, x) mm
    data/slices/CaseNN_slice_K.h5   training slices, K = 0..D-1 (SLC-Net counts from 0)
    train_slices.list               slices of the 35 training patients, SLC-Net's patient order
    val.list / test.list            its 5 validation / 10 test patients
    extra.list                      labeled cases outside the split (none in the 50-case set)

Conventions:

* MetaImage is read here with numpy (header keys, ``ElementType``, byte order, ``LOCAL`` or a
  separate data file, zlib ``CompressedData``): no SimpleITK. The array is ``DimSize`` reversed,
  (z, y, x), which is what SimpleITK's ``GetArrayFromImage`` gives; ``volume[k]`` is slice k.
* Intensities: min-max per volume to [0, 1] (float64, stored float32), as ``prepare_acdc``;
  slices keep their native in-plane size (the training transforms resize to 256 x 256).
* The split: SLC-Net's lists (the patient order of its ``train_slices.list``; its labeled
  subsets of 2/4/7/14 patients are 47/111/191/391 slices).
* Empty lists are not written (a partial download gives partial splits).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from segssl.data import image_io
from segssl.data.conversion import check_target, write_lists
from segssl.data.readers import DataError
from segssl.utils.atomic import staged_folder

Log = Callable[[str], None]

# SLC-Net's PROMISE12 split, by case number: training patients in its train_slices.list order
# (labeled = the first N), validation and test in its list order.
TRAIN_CASES: tuple[int, ...] = (
    48, 35, 4, 25, 23, 15, 8, 0, 17, 44, 47, 11, 18, 26, 42, 33, 24, 14, 29, 6,
    27, 41, 28, 13, 37, 12, 40, 20, 1, 32, 19, 21, 39, 10, 3,
)  # fmt: skip
VAL_CASES: tuple[int, ...] = (31, 2, 7, 46, 22)
TEST_CASES: tuple[int, ...] = (9, 30, 45, 34, 43, 36, 38, 16, 5, 49)
LIST_NAMES = ("train_slices.list", "val.list", "test.list", "extra.list")

ELEMENT_TYPES: dict[str, str] = {
    "MET_CHAR": "i1",
    "MET_UCHAR": "u1",
    "MET_SHORT": "i2",
    "MET_USHORT": "u2",
    "MET_INT": "i4",
    "MET_UINT": "u4",
    "MET_LONG": "i8",
    "MET_ULONG": "u8",
    "MET_LONG_LONG": "i8",
    "MET_ULONG_LONG": "u8",
    "MET_FLOAT": "f4",
    "MET_DOUBLE": "f8",
}
_SEGMENTATION = re.compile(r"^Case(\d{2})_segmentation\.mhd$", re.IGNORECASE)


def case_id(number: int) -> str:
    """``Case07`` from 7."""
    return f"Case{number:02d}"


def read_mhd_header(path: Path) -> dict[str, str]:
    """``Key = value`` lines of a MetaImage header, up to ``ElementDataFile`` (the last key)."""
    header: dict[str, str] = {}
    try:
        with path.open("rb") as handle:
            for raw in handle:
                key, sep, value = raw.decode("latin-1").partition("=")
                if not sep:
                    continue
                header[key.strip()] = value.strip()
                if key.strip() == "ElementDataFile":
                    header["_data_offset"] = str(handle.tell())
                    break
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err})") from err
    return header


def read_mhd(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """A MetaImage volume as stored, axes (z, y, x), and its spacing (z, y, x) in mm."""
    header = read_mhd_header(path)
    for key in ("NDims", "DimSize", "ElementType", "ElementDataFile"):
        if key not in header:
            raise DataError(f"{path}: MetaImage header lacks {key!r}")
    dims = [int(v) for v in header["DimSize"].split()]
    if len(dims) != int(header["NDims"]) or len(dims) != 3:
        raise DataError(f"{path}: DimSize {dims} with NDims {header['NDims']}, expected 3-D")
    if int(header.get("ElementNumberOfChannels", "1")) != 1:
        raise DataError(f"{path}: multi-channel MetaImage, expected one channel")
    code = ELEMENT_TYPES.get(header["ElementType"])
    if code is None:
        raise DataError(
            f"{path}: ElementType {header['ElementType']!r}, expected one of "
            f"{sorted(ELEMENT_TYPES)}"
        )
    msb = header.get("BinaryDataByteOrderMSB", header.get("ElementByteOrderMSB", "False"))
    dtype = np.dtype(code).newbyteorder(">" if msb.lower() == "true" else "<")
    data_file = header["ElementDataFile"]
    if data_file == "LOCAL":
        raw = path.read_bytes()[int(header["_data_offset"]) :]
    else:
        data_path = path.parent / data_file
        if not data_path.is_file():
            raise DataError(f"{path}: its data file {data_path} is missing")
        raw = data_path.read_bytes()
    if header.get("CompressedData", "False").lower() == "true":
        try:
            raw = zlib.decompress(raw)
        except zlib.error as err:
            raise DataError(f"{path}: cannot decompress its data ({err})") from err
    count = int(np.prod(dims))
    if len(raw) < count * dtype.itemsize:
        raise DataError(
            f"{path}: data holds {len(raw)} bytes, expected {count * dtype.itemsize} for "
            f"DimSize {dims} of {header['ElementType']}"
        )
    array = np.frombuffer(raw, dtype=dtype, count=count).reshape(dims[::-1])
    spacing_key = "ElementSpacing" if "ElementSpacing" in header else "ElementSize"
    spacing = [float(v) for v in header.get(spacing_key, "1 1 1").split()]
    return array.astype(dtype.newbyteorder("="), copy=False), tuple(spacing[::-1])


def find_cases(raw_dir: Path) -> dict[int, tuple[Path, Path]]:
    """(image, segmentation) header paths of every labeled case; a case twice is an error."""
    if not raw_dir.is_dir():
        raise DataError(f"raw PROMISE12 folder not found: {raw_dir}")
    found: dict[int, tuple[Path, Path]] = {}
    for seg in sorted(raw_dir.rglob("*.mhd")):
        match = _SEGMENTATION.match(seg.name)
        if not match:
            continue
        number = int(match.group(1))
        image = seg.with_name(f"{case_id(number)}.mhd")
        if not image.is_file():
            raise DataError(f"{seg}: no image {image.name} beside it")
        if number in found:
            raise DataError(f"{case_id(number)} found twice: {found[number][1]} and {seg}")
        found[number] = (image, seg)
    if not found:
        raise DataError(
            f"{raw_dir}: no CaseNN_segmentation.mhd files found (expected the PROMISE12 "
            "training data)"
        )
    return dict(sorted(found.items()))


def load_case(image_path: Path, seg_path: Path) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Normalised image, checked label and spacing of one case, (z, y, x)."""
    image, spacing = read_mhd(image_path)
    label, _ = read_mhd(seg_path)
    if image.shape != label.shape:
        raise DataError(f"{seg_path}: shape {label.shape} != image shape {image.shape}")
    values = np.unique(label)
    if not set(values.tolist()) <= {0, 1}:
        raise DataError(f"{seg_path}: label values {values[:10].tolist()}, expected 0 and 1")
    return image_io.normalise(image, "minmax", image_path), label.astype(np.uint8), spacing


def slice_ids(case: str, depth: int) -> list[str]:
    """SLC-Net's slice ids of a volume, from 0."""
    return [f"{case}_slice_{k}" for k in range(depth)]


def build_lists(depths: dict[int, int]) -> dict[str, list[str]]:
    """Every non-empty split list, from the depth of each written volume."""
    known = set(TRAIN_CASES) | set(VAL_CASES) | set(TEST_CASES)
    lists = {
        "train_slices.list": [
            s for n in TRAIN_CASES if n in depths for s in slice_ids(case_id(n), depths[n])
        ],
        "val.list": [case_id(n) for n in VAL_CASES if n in depths],
        "test.list": [case_id(n) for n in TEST_CASES if n in depths],
        "extra.list": [case_id(n) for n in sorted(depths) if n not in known],
    }
    return {name: ids for name, ids in lists.items() if ids}


def prepare_promise12(
    raw_dir: Path | str,
    out_dir: Path | str,
    *,
    overwrite: bool = False,
    log: Log | None = None,
) -> dict[str, int]:
    """Convert ``raw_dir`` into ``out_dir``; returns the number of ids in each list written.
    Slice files are written for the training patients only (what training reads). Nothing
    appears at ``out_dir`` unless every case converts."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    check_target(out_dir, raw_dir, overwrite, image_dir="data", list_names=LIST_NAMES)
    cases = find_cases(raw_dir)
    depths: dict[int, int] = {}
    with staged_folder(out_dir, replace=True) as staging:
        data_dir = staging / "data"
        (data_dir / "slices").mkdir(parents=True)
        for number, (image_path, seg_path) in cases.items():
            if log:
                log(f"{case_id(number)} <- {image_path}")
            image, label, spacing = load_case(image_path, seg_path)
            case = case_id(number)
            image_io.write_h5_case(
                data_dir / f"{case}.h5", image, label, spacing=np.asarray(spacing)
            )
            if number in TRAIN_CASES:
                for k, slice_id in enumerate(slice_ids(case, image.shape[0])):
                    image_io.write_h5_case(
                        data_dir / "slices" / f"{slice_id}.h5", image[k], label[k]
                    )
            depths[number] = image.shape[0]
        lists = build_lists(depths)
        counts = write_lists(staging, lists)
    return counts
