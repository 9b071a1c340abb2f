"""What a NIfTI folder dataset (``data=folder``) is made of: the facts a plan is made from.

Two passes, so that a bad dataset is refused before anything is read at scale: the headers of
every case first (shapes, spacings, channel counts: cheap), then the voxels, one case at a time
with a progress bar. Per case only small summaries are kept (a sample of foreground
intensities, class voxel counts, object sizes), so memory does not grow with the dataset.

The checks match the layout's own (``segssl.data.layouts.folder``) and each error names the
file and what was expected, as ``data=folder`` does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from segssl.data import image_io
from segssl.data.layouts.folder import FolderLayout
from segssl.data.readers import DataError

# foreground intensities kept per case (nnU-Net samples 10k): percentiles of the pooled sample
SAMPLES_PER_CASE = 10_000
# CT: air is about -1000 HU; an image whose low percentile sits this low is Hounsfield-like
CT_AIR_BELOW = -500.0


@dataclass
class CaseHeader:
    """A case's header facts (no voxel data read)."""

    case: str
    image: Path
    label: Path | None
    shape: tuple[int, ...]  # spatial, 3-D (a 2-D image gets a slice axis of 1)
    spacing: tuple[float, ...]
    ndim: int  # as stored: 2 or 3 spatial axes
    channels: int


@dataclass
class CaseSummary:
    """What the voxel pass keeps of one case."""

    low: float  # 0.5th percentile of all voxels (the modality guess)
    foreground: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    class_voxels: dict[int, int] = field(default_factory=dict)
    objects: dict[int, list[int]] = field(default_factory=dict)  # voxels per connected object
    integer_valued: bool = True


def read_headers(layout: FolderLayout) -> dict[str, CaseHeader]:
    """Every case the split lists name, from its header: refuses a case listed twice or in two
    lists (it would be counted twice in ``data.labeled``), missing files, mixed dimensionality
    and channel counts before any voxel is read."""
    labels_dir = layout.root / "labelsTr"
    if not labels_dir.is_dir() or not any(labels_dir.glob("*.nii*")):
        raise DataError(
            f"{labels_dir}: no label files (expected <case>.nii.gz label maps); semi-supervised "
            "training needs at least one labeled case"
        )
    layout.check_splits()
    cases: dict[str, str] = {}
    for split in ("train", "val", "test"):
        if split == "test" and not layout.has_split(split):
            continue
        if not layout.has_split(split):
            raise DataError(
                f"split list not found: {layout.list_path(split)} (one case id per line; "
                "data=folder trains on train.list and selects checkpoints on val.list, or "
                "without val.list on the folds of splits_final.json)"
            )
        layout.check_files(split)
        for case in layout.cases(split):
            cases.setdefault(case, split)
    headers = {case: _header(layout, case) for case in cases}
    _refuse_mixed(headers, "ndim", "spatial dimensions", "2-D or 3-D images, all alike")
    _refuse_mixed(headers, "channels", "channels", "the same channel count in every image")
    channels = next(iter(headers.values())).channels
    if channels != 1:
        first = next(iter(headers.values())).image
        raise DataError(f"{first}: {channels} channels; data=folder reads single-channel images")
    for header in headers.values():
        if header.label is None:
            continue
        shape = _spatial_shape(header.label, nib.load(str(header.label)).shape)[0]
        if shape != header.shape:
            raise DataError(
                f"{header.label}: label shape {shape} != image shape {header.shape} "
                f"({header.image}); expected the same grid"
            )
    if not any(h.label is not None for c, h in headers.items() if cases[c] == "train"):
        raise DataError(
            f"{layout.source('train')}: none of its cases has a label in {labels_dir}; "
            "semi-supervised training needs at least one labeled case"
        )
    return headers


def _header(layout: FolderLayout, case: str) -> CaseHeader:
    image = layout.image_path(case)
    try:
        nifti = nib.load(str(image))
    except Exception as err:  # nibabel raises several types for unreadable files
        raise DataError(f"{image}: cannot read as NIfTI ({err})") from err
    shape, ndim, channels = _spatial_shape(image, nifti.shape)
    if image.name.endswith("_0000.nii.gz"):  # nnU-Net names: one file per channel
        siblings = (image.with_name(image.name.replace("_0000", f"_{k:04d}")) for k in range(1, 10))
        channels *= 1 + sum(1 for sibling in siblings if sibling.is_file())
    zooms = [float(z) for z in nifti.header.get_zooms()[:ndim]]
    if ndim == 2:
        zooms.insert(layout.slice_axis, 1.0)
    label = layout.label_path(case)
    return CaseHeader(
        case, image, label if label.is_file() else None, shape, tuple(zooms), ndim, channels
    )


def _spatial_shape(path: Path, shape: tuple[int, ...]) -> tuple[tuple[int, ...], int, int]:
    """(3-D spatial shape, stored spatial dims, channels) of a NIfTI shape: a 4th axis is
    channels (trailing singleton axes dropped, as the reader does)."""
    dims = list(shape)
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    channels = 1
    if len(dims) == 4:
        channels = dims.pop()
    while len(dims) == 3 and dims[-1] == 1:
        dims.pop()
    if len(dims) not in (2, 3):
        raise DataError(f"{path}: shape {tuple(shape)}, expected a 2-D or 3-D image")
    ndim = len(dims)
    if ndim == 2:
        dims.append(1)
    return tuple(int(d) for d in dims), ndim, channels


def _refuse_mixed(headers: dict[str, CaseHeader], key: str, what: str, expected: str) -> None:
    groups: dict[Any, list[CaseHeader]] = {}
    for header in headers.values():
        groups.setdefault(getattr(header, key), []).append(header)
    if len(groups) > 1:
        parts = [
            f"{value} {what}: {len(found)} case(s), e.g. {found[0].image}"
            for value, found in sorted(groups.items())
        ]
        raise DataError(f"mixed {what} in the dataset ({'; '.join(parts)}); expected {expected}")


def summarise_case(header: CaseHeader, rng: np.random.Generator) -> CaseSummary:
    """Read one case's voxels and keep its summary."""
    _, image = image_io.read_nifti(header.image, ndims=(2, 3))
    if not np.isfinite(image).all():
        raise DataError(f"{header.image}: the image contains NaN or inf values")
    summary = CaseSummary(low=float(np.percentile(image, 0.5)))
    summary.integer_valued = bool(np.array_equal(image, np.rint(image)))
    if header.label is None:
        return summary
    _, label = image_io.read_nifti(header.label, dtype=None, ndims=(2, 3))
    if not np.array_equal(label, np.rint(label)) or label.min() < 0:
        raise DataError(f"{header.label}: label values must be whole numbers >= 0 (class indices)")
    label = label.astype(np.int64)
    values, counts = np.unique(label, return_counts=True)
    summary.class_voxels = {int(v): int(c) for v, c in zip(values, counts, strict=True)}
    foreground = image[label > 0]
    if foreground.size > SAMPLES_PER_CASE:
        foreground = rng.choice(foreground, SAMPLES_PER_CASE, replace=False)
    summary.foreground = foreground.astype(np.float32)
    for value in summary.class_voxels:
        if value == 0:
            continue
        components, count = ndimage.label(label == value)
        sizes = np.bincount(components.ravel())[1:]
        summary.objects[value] = [int(s) for s in sizes if s > 0]
    return summary


def fingerprint(
    root: str | Path, *, slice_axis: int = 2, seed: int = 0, num_folds: int = 5
) -> dict[str, Any]:
    """The dataset's fingerprint (JSON-able); raises ``DataError`` for a dataset data=folder
    could not train on."""
    layout = FolderLayout(root, dims=3, slice_axis=slice_axis, cache=False, num_folds=num_folds)
    layout.save_split = False  # plan writes nothing before the whole dataset is planned
    headers = read_headers(layout)
    rng = np.random.default_rng(seed)
    summaries: dict[str, CaseSummary] = {}
    for case, header in tqdm(
        headers.items(), desc=f"Fingerprinting {layout.root.name}", unit="case"
    ):
        summaries[case] = summarise_case(header, rng)
    _refuse_odd_label_values(headers, summaries)
    train = layout.cases("train")
    split_of = {c: s for s in ("val", "test") if layout.has_split(s) for c in layout.cases(s)}
    labeled = [c for c in train if headers[c].label is not None]
    return {
        "root": str(layout.root.resolve()),
        "cases": {
            "labeled": len(labeled),
            "unlabeled": len(train) - len(labeled),
            "val": len(layout.cases("val")),
            "test": len(layout.cases("test")) if layout.has_split("test") else 0,
        },
        "split": split_facts(layout, headers),
        "per_case": [
            {
                "case": c,
                "split": "train" if c in train else split_of.get(c, "?"),
                "labeled": headers[c].label is not None,
                "shape": list(headers[c].shape),
                "spacing": [round(z, 4) for z in headers[c].spacing],
            }
            for c in headers
        ],
        "dimensionality": next(iter(headers.values())).ndim,
        "shape": _spread([h.shape for h in headers.values()]),
        "spacing": _spread([h.spacing for h in headers.values()]),
        "intensity": _intensity(summaries),
        "modality": _modality(summaries),
        "labels": _labels(headers, summaries, layout.root),
    }


def split_facts(layout: FolderLayout, headers: dict[str, CaseHeader]) -> dict[str, Any]:
    """Where train and val come from: the lists, or the cross-validation folds (read from
    splits_final.json, or to be made and saved by ``plan``), with each fold's labeled
    training cases (``data.labeled`` must fit the smallest)."""
    if layout.uses_lists():
        return {"source": "lists"}
    counts = []
    for k in range(layout.split().folds):
        fold = FolderLayout(layout.root, dims=3, cache=False, fold=k, num_folds=layout.num_folds)
        fold.save_split = False
        train = fold.cases("train")
        counts.append(sum(1 for c in train if c in headers and headers[c].label is not None))
    return {
        "source": layout.splits_path.name if layout.splits_path.is_file() else "made",
        "file": str(layout.splits_path),
        "folds": len(counts),
        "labeled_per_fold": counts,
    }


def _spread(values: list[tuple]) -> dict[str, list[float]]:
    array = np.asarray(values, dtype=np.float64)
    median = np.median(array, axis=0)
    return {
        "median": median.round(4).tolist(),
        "min": array.min(axis=0).round(4).tolist(),
        "max": array.max(axis=0).round(4).tolist(),
        "p10": np.percentile(array, 10, axis=0).round(4).tolist(),
        "p90": np.percentile(array, 90, axis=0).round(4).tolist(),
        "anisotropy": round(float(median.max() / median.min()), 3),
    }


def _intensity(summaries: dict[str, CaseSummary]) -> dict[str, float]:
    pooled = np.concatenate([s.foreground for s in summaries.values()])
    if pooled.size == 0:
        return {"foreground_voxels_sampled": 0}
    return {
        "foreground_voxels_sampled": int(pooled.size),
        "mean": float(pooled.mean()),
        "std": float(pooled.std()),
        "median": float(np.median(pooled)),
        "p00_5": float(np.percentile(pooled, 0.5)),
        "p99_5": float(np.percentile(pooled, 99.5)),
        "min": float(pooled.min()),
        "max": float(pooled.max()),
    }


def _modality(summaries: dict[str, CaseSummary]) -> dict[str, Any]:
    """CT-like (Hounsfield) or MR, from the intensity ranges: CT stores integers with air at
    about -1000, MR intensities are arbitrary and non-negative."""
    low = float(np.median([s.low for s in summaries.values()]))
    integers = all(s.integer_valued for s in summaries.values())
    if low <= CT_AIR_BELOW and integers:
        guess = "CT"
        reason = (
            f"the median 0.5th intensity percentile is {low:.0f} (air is about -1000 HU) and "
            "every image holds whole numbers: Hounsfield units"
        )
    else:
        guess = "MR"
        reason = (
            f"the median 0.5th intensity percentile is {low:.1f}, far above air's -1000 HU"
            + ("" if integers else ", and intensities are not whole numbers")
            + ": not Hounsfield units, so MR-like (arbitrary scale per scan)"
        )
    return {"guess": guess, "reason": reason, "median_low_percentile": low}


def _refuse_odd_label_values(
    headers: dict[str, CaseHeader], summaries: dict[str, CaseSummary]
) -> None:
    """A label value found in one label file and in no other is a mislabelled file."""
    labeled = [c for c, s in summaries.items() if headers[c].label is not None]
    if len(labeled) < 3:
        return
    for case in labeled:
        others = set().union(*(summaries[c].class_voxels for c in labeled if c != case))
        odd = sorted(set(summaries[case].class_voxels) - others)
        if odd:
            raise DataError(
                f"{headers[case].label}: label value(s) {odd} appear in no other label file "
                f"(the others hold {sorted(others)}); expected the same classes throughout"
            )


def _labels(
    headers: dict[str, CaseHeader], summaries: dict[str, CaseSummary], root: Path
) -> dict[str, Any]:
    voxels: dict[int, int] = {}
    objects: dict[int, list[int]] = {}
    volume_mm3: dict[int, list[float]] = {}
    for case, summary in summaries.items():
        for value, count in summary.class_voxels.items():
            voxels[value] = voxels.get(value, 0) + count
        voxel_mm3 = float(np.prod(headers[case].spacing))
        for value, sizes in summary.objects.items():
            objects.setdefault(value, []).extend(sizes)
            volume_mm3.setdefault(value, []).extend(s * voxel_mm3 for s in sizes)
    total = sum(voxels.values())
    values = sorted(voxels)
    names = _class_names(root, values)
    per_class = {}
    for value in values:
        if value == 0:
            continue
        sizes = np.asarray(objects.get(value, [0]))
        per_class[str(value)] = {
            "name": names.get(value, f"class_{value}"),
            "voxel_fraction": round(voxels[value] / total, 6),
            "objects": int(len(objects.get(value, []))),
            "object_voxels_median": float(np.median(sizes)),
            "object_voxels_min": int(sizes.min()),
            "object_mm3_median": round(float(np.median(volume_mm3.get(value, [0.0]))), 2),
        }
    return {
        "values": values,
        "background_fraction": round(voxels.get(0, 0) / total, 6) if total else None,
        "classes": per_class,
    }


def _class_names(root: Path, values: list[int]) -> dict[int, str]:
    """Names from an nnU-Net ``dataset.json`` (``labels``: name -> value) when there is one."""
    path = root / "dataset.json"
    if not path.is_file():
        return {}
    try:
        labels = json.loads(path.read_text()).get("labels", {})
        named = {int(v): str(k) for k, v in labels.items() if str(v).isdigit()}
        # the older nnU-Net format maps value -> name
        named.update({int(k): str(v) for k, v in labels.items() if str(k).isdigit()})
    except (OSError, ValueError, AttributeError) as err:
        raise DataError(f"{path}: cannot read its 'labels' ({err})") from err
    return {v: named[v] for v in values if v in named}
