"""Per-volume segmentation metrics (Dice, Jaccard, HD95, ASD) with one explicit empty-mask policy.

Every foreground class ``1..num_classes-1`` of a volume gets ``dice``, ``jaccard``, ``hd95``,
``asd`` and the flags ``pred_empty`` / ``label_empty``. Distances are in voxel units, or in mm
when ``spacing`` (one value per array axis, same axis order as the arrays) is given.

Distance definitions are MONAI's, so numbers are comparable with MONAI-based papers (the tests
check both against ``monai.metrics`` and against an independent brute-force reference):

* surface of a mask: its voxels with at least one face neighbour (4-connectivity in 2-D,
  6 in 3-D) outside the mask; beyond the array border counts as outside
  (``monai.metrics.utils.get_mask_edges``: mask XOR scipy binary erosion);
* surface distance: Euclidean distance from a surface voxel to the nearest surface voxel of the
  other mask;
* ``hd95``: the larger of the two directed 95th percentiles (linear interpolation), as
  ``compute_hausdorff_distance(percentile=95)``. medpy/SSL4MIS take the 95th percentile of both
  directions pooled, which is never larger (up to interpolation);
* ``asd``: symmetric average surface distance, the mean of both directions' distances pooled,
  as ``compute_average_surface_distance(symmetric=True)``. SSL4MIS reports medpy's *directed*
  ``asd`` (prediction to reference only).

Same definitions, own implementation, for speed (issue: whole-volume evaluation must not dominate
a run): surfaces come from scipy erosion inside the union's bounding box and nearest distances
from a KD-tree, computed once per class for both HD95 and ASD. Going through MONAI
(``get_edge_surface_distance``) gives identical numbers but is about 10x slower on CPU, its
bounding-box crop dominating (ACDC volume, 3 classes: ~35 ms vs ~390 ms on 2 busy cores).
Dice and Jaccard come from one confusion matrix of the whole label map instead of per-class
one-hot tensors.

Empty-mask policy (``EMPTY_MASK_POLICY``), applied to every class of every volume:

* prediction and reference both empty: dice 1, jaccard 1, hd95 0, asd 0 (a correct "absent");
* exactly one of them empty: dice 0, jaccard 0, and hd95 = asd = the volume's diagonal
  (``volume_diagonal``: the length of the array's extent, in the same units), the worst distance
  possible, so a missed or hallucinated structure is penalised instead of silently dropped from
  the means (MONAI would return inf/nan there).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial import KDTree

EMPTY_MASK_POLICY = "both_empty_perfect__one_empty_diagonal"
METRIC_NAMES = ("dice", "jaccard", "hd95", "asd")
HD_PERCENTILE = 95.0

ClassMetrics = dict[str, float | bool]
CaseMetrics = dict[str, ClassMetrics]


def case_metrics(
    pred: np.ndarray | torch.Tensor,
    label: np.ndarray | torch.Tensor,
    num_classes: int,
    spacing: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
) -> CaseMetrics:
    """Metrics of one volume, per foreground class, keyed by class name (see module docstring).

    ``class_names`` names either the foreground classes (``num_classes - 1`` names) or all
    classes including background (``num_classes`` names, the first is dropped); default
    ``class1``, ``class2``, ...
    """
    pred_a, label_a = _check_label_maps(pred, label, num_classes)
    voxel = _check_spacing(spacing, pred_a.ndim)
    counts = np.stack(_overlap_counts(pred_a, label_a, num_classes))
    overlap = overlap_case_metrics(counts, num_classes, class_names)
    worst = volume_diagonal(pred_a.shape, voxel)
    result: CaseMetrics = {}
    for c, (name, scores) in enumerate(overlap.items(), start=1):
        if not (scores["pred_empty"] or scores["label_empty"]):
            distances = _distance_scores(pred_a == c, label_a == c, voxel)
        else:
            distances = _empty_distances(scores["pred_empty"], scores["label_empty"], worst)
        result[name] = {
            "dice": scores["dice"],
            "jaccard": scores["jaccard"],
            **distances,
            "pred_empty": scores["pred_empty"],
            "label_empty": scores["label_empty"],
        }
    return result


def overlap_case_metrics(
    counts: np.ndarray | torch.Tensor,
    num_classes: int,
    class_names: Sequence[str] | None = None,
) -> CaseMetrics:
    """Dice, Jaccard and the empty flags of one volume, per foreground class, from its overlap
    counts ``(3, num_classes)``: intersection, prediction size, reference size per class (as
    ``overlap_metrics.overlap_counts`` makes them on the device). ``case_metrics`` without the
    distances, by the same arithmetic and the same empty-mask policy, so validation can count
    on the device and score here without moving label maps to the host."""
    table = counts.detach().cpu().numpy() if isinstance(counts, torch.Tensor) else counts
    table = np.asarray(table)
    if table.shape != (3, num_classes):
        raise ValueError(
            f"counts: expected shape (3, {num_classes}) (intersection, prediction and "
            f"reference sizes per class), got {table.shape}"
        )
    intersection, pred_size, label_size = table
    names = foreground_names(num_classes, class_names)
    return {
        name: {
            **_overlap_scores(intersection[c], pred_size[c], label_size[c]),
            "pred_empty": bool(pred_size[c] == 0),
            "label_empty": bool(label_size[c] == 0),
        }
        for c, name in enumerate(names, start=1)
    }


def aggregate(cases: Sequence[Mapping[str, Mapping[str, float | bool]]]) -> dict:
    """Summarise ``case_metrics`` outputs: mean over volumes per class, then mean over classes.

    ``per_class`` also counts the volumes whose prediction / reference was empty for that class,
    so a report can tell a low mean caused by missed structures from one caused by poor overlap.
    Cases scored without distances (``overlap_case_metrics``: validation between distance
    rounds) summarise to Dice and Jaccard only; every case must carry the same metrics.
    """
    if len(cases) == 0:
        raise ValueError("cases: expected at least one case_metrics result, got none")
    names = list(cases[0])
    for i, case in enumerate(cases):
        if list(case) != names:
            raise ValueError(f"cases[{i}]: expected classes {names}, got {list(case)}")
    metrics = [m for m in METRIC_NAMES if names and m in cases[0][names[0]]]
    for i, case in enumerate(cases):
        for name in names:
            missing = [m for m in metrics if m not in case[name]]
            if missing:
                raise ValueError(f"cases[{i}][{name!r}]: expected metrics {metrics}, no {missing}")
    per_class = {name: _class_summary([case[name] for case in cases], metrics) for name in names}
    mean = {m: float(np.mean([per_class[n][m] for n in names])) for m in metrics}
    return {"mean": mean, "per_class": per_class, "num_cases": len(cases)}


def volume_diagonal(shape: Sequence[int], spacing: Sequence[float] | None = None) -> float:
    """Length of the array's diagonal (extent ``shape * spacing``): the empty-mask penalty."""
    voxel = _check_spacing(spacing, len(shape))
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, voxel, strict=True))))


def foreground_names(num_classes: int, class_names: Sequence[str] | None = None) -> list[str]:
    """Names of classes ``1..num_classes-1``; accepts names with or without the background."""
    if class_names is None:
        return [f"class{c}" for c in range(1, num_classes)]
    names = [str(n) for n in class_names]
    if len(names) == num_classes:
        names = names[1:]
    if len(names) != num_classes - 1:
        raise ValueError(
            f"class_names: expected {num_classes - 1} foreground names (or {num_classes} "
            f"including background) for num_classes={num_classes}, got {len(names)}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"class_names: expected unique names, got {names}")
    return names


def _check_label_maps(
    pred: np.ndarray | torch.Tensor, label: np.ndarray | torch.Tensor, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Validate both label maps and return them as integer numpy arrays."""
    if not isinstance(num_classes, int | np.integer) or num_classes < 2:
        raise ValueError(f"num_classes: expected an int >= 2 (background + 1), got {num_classes!r}")
    pred_a, label_a = _to_numpy(pred, "pred"), _to_numpy(label, "label")
    if pred_a.shape != label_a.shape:
        raise ValueError(
            f"pred and label: expected the same shape, got pred {pred_a.shape} "
            f"and label {label_a.shape}"
        )
    if pred_a.ndim not in (2, 3):
        raise ValueError(f"pred: expected a 2-D or 3-D label map, got shape {pred_a.shape}")
    for name, arr in (("pred", pred_a), ("label", label_a)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(
                f"{name}: expected values in [0, {num_classes - 1}] for num_classes={num_classes}, "
                f"got range [{arr.min()}, {arr.max()}]"
            )
    return pred_a, label_a


def _to_numpy(array: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """Integer numpy view of a label map; floats are refused (probabilities passed by mistake)."""
    arr = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name}: expected an integer label map, got dtype {arr.dtype}")
    return arr


def _check_spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    """Per-axis voxel size; unit spacing when ``None``."""
    if spacing is None:
        return (1.0,) * ndim
    values = tuple(float(s) for s in np.atleast_1d(np.asarray(spacing, dtype=np.float64)))
    if len(values) != ndim or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(
            f"spacing: expected {ndim} positive values (one per array axis), got {spacing!r}"
        )
    return values


def _overlap_counts(
    pred: np.ndarray, label: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class intersection, prediction size and reference size from one confusion matrix."""
    codes = label.ravel().astype(np.int64) * num_classes + pred.ravel()
    confusion = np.bincount(codes, minlength=num_classes * num_classes)
    confusion = confusion.reshape(num_classes, num_classes)  # [label, pred]
    return np.diag(confusion), confusion.sum(axis=0), confusion.sum(axis=1)


def _overlap_scores(intersection: int, pred_size: int, label_size: int) -> dict[str, float]:
    """Dice and Jaccard; both masks empty counts as perfect agreement."""
    total = int(pred_size) + int(label_size)
    if total == 0:
        return {"dice": 1.0, "jaccard": 1.0}
    return {
        "dice": 2.0 * int(intersection) / total,
        "jaccard": int(intersection) / (total - int(intersection)),
    }


def _distance_scores(
    pred_mask: np.ndarray, label_mask: np.ndarray, spacing: tuple[float, ...]
) -> dict[str, float]:
    """HD95 and ASD from one symmetric surface-distance computation (both masks non-empty)."""
    box = _bounding_box(pred_mask | label_mask)
    pred_pts = _surface_points(pred_mask[box], spacing)
    label_pts = _surface_points(label_mask[box], spacing)
    pred_to_label = KDTree(label_pts).query(pred_pts, k=1)[0]
    label_to_pred = KDTree(pred_pts).query(label_pts, k=1)[0]
    hd95 = max(
        np.percentile(pred_to_label, HD_PERCENTILE), np.percentile(label_to_pred, HD_PERCENTILE)
    )
    asd = np.concatenate([pred_to_label, label_to_pred]).mean()
    return {"hd95": float(hd95), "asd": float(asd)}


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """Tight box around a non-empty mask; cropping to it keeps every surface voxel a surface
    voxel, since whatever lies outside the box is background."""
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def _surface_points(mask: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Physical coordinates of the mask's surface voxels (face connectivity; the array border
    counts as outside, as in MONAI's ``get_mask_edges``)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    eroded = ndimage.binary_erosion(mask, structure=structure, border_value=0)
    return np.argwhere(mask & ~eroded) * np.asarray(spacing, dtype=np.float64)


def _empty_distances(pred_empty: bool, label_empty: bool, worst: float) -> dict[str, float]:
    """Distances under the empty-mask policy: 0 if both empty, else the worst possible."""
    value = 0.0 if (pred_empty and label_empty) else worst
    return {"hd95": value, "asd": value}


def _class_summary(
    values: Sequence[Mapping[str, float | bool]], metrics: Sequence[str] = METRIC_NAMES
) -> dict[str, float | int]:
    """Mean of each metric over volumes, and how many volumes had an empty mask."""
    summary: dict[str, float | int] = {
        m: float(np.mean([float(v[m]) for v in values])) for m in metrics
    }
    summary["num_pred_empty"] = int(sum(bool(v["pred_empty"]) for v in values))
    summary["num_label_empty"] = int(sum(bool(v["label_empty"]) for v in values))
    return summary
