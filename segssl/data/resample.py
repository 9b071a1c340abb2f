"""Resampling a volume to a target voxel spacing (``data.layout_options.target_spacing``).

Why: CT and MR datasets mix voxel sizes (e.g. 0.7 x 0.7 x 5 mm next to 0.8 x 0.8 x 1.25 mm);
a network sees voxels, so cases are brought to one spacing, as nnU-Net does, before training.

Geometry (nnU-Net's): the new shape per axis is ``round(shape * spacing / target)`` (at least
1) and the resampled grid covers the same field of view as the original, voxel centres at
half-voxel offsets from its edges. An axis whose spacing already equals the target (1e-3
relative) and an axis of one voxel (a 2-D image's slice axis: nothing to interpolate between)
are left exactly as they are.

How: images with ``torch.nn.functional.interpolate`` (``trilinear``, ``align_corners=False``,
which is that half-voxel-centred geometry, fast and multi-threaded, and the identity on an
axis whose size does not change); labels by nearest neighbour as an index gather per axis with
the same geometry (torch's ``nearest-exact`` convention), so every label value is copied, never
computed, in any integer dtype (torch's nearest does not take int64). Not scipy's ``zoom``
(slower spline code, and its order-0 rounding of ties is harder to state) nor MONAI's
``Spacing`` (it works from the affine and chooses its own output shape, not nnU-Net's rule).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from segssl.data.readers import DataError

# an axis whose spacing is within this relative tolerance of the target is not resampled
TOLERANCE = 1e-3
KINDS = ("linear", "nearest")


def check_target_spacing(
    value: Any, key: str = "data.layout_options.target_spacing"
) -> tuple[float, float, float] | None:
    """``null`` or three positive spacings (mm), else a ``DataError`` naming ``key``."""
    if value is None:
        return None
    error = DataError(
        f"{key}={value!r}: expected null or three positive spacings [s0, s1, s2] (mm)"
    )
    if isinstance(value, str | bytes | Mapping):
        raise error
    try:
        items = list(value)
        spacing = tuple(float(v) for v in items if not isinstance(v, bool))
    except (TypeError, ValueError) as err:
        raise error from err
    if len(spacing) != len(items):  # a boolean is not a spacing
        raise error
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise error
    return spacing[0], spacing[1], spacing[2]


def axes_to_resample(
    shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]
) -> list[bool]:
    """Per axis: does it need resampling (not one voxel, spacing not already the target)?"""
    return [
        int(n) > 1 and abs(float(s) - float(t)) > TOLERANCE * float(t)
        for n, s, t in zip(shape, spacing, target, strict=True)
    ]


def target_shape(
    shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]
) -> tuple[int, ...]:
    """The shape after resampling: ``round(n * s / t)`` (at least 1) on the axes that change."""
    change = axes_to_resample(shape, spacing, target)
    return tuple(
        max(1, round(int(n) * float(s) / float(t))) if c else int(n)
        for n, s, t, c in zip(shape, spacing, target, change, strict=True)
    )


def resample(
    array: np.ndarray, spacing: Sequence[float], target: Sequence[float], kind: str
) -> tuple[np.ndarray, tuple[float, ...]]:
    """``array`` on the ``target`` grid, and its new spacing (the target on every resampled
    axis, the old spacing on the axes left alone). ``kind``: linear (images) or nearest
    (labels)."""
    if array.ndim != len(spacing) or array.ndim != len(target):
        raise ValueError(f"shape {array.shape}, spacing {spacing}, target {target}: ranks differ")
    change = axes_to_resample(array.shape, spacing, target)
    new_spacing = tuple(
        float(t) if c else float(s) for s, t, c in zip(spacing, target, change, strict=True)
    )
    return resize(array, target_shape(array.shape, spacing, target), kind), new_spacing


def resize(array: np.ndarray, shape: Sequence[int], kind: str) -> np.ndarray:
    """``array`` resampled to ``shape`` over the same field of view (see the module docstring);
    unchanged (the same object) when the shape already is ``shape``."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: expected one of {list(KINDS)}")
    shape = tuple(int(n) for n in shape)
    if len(shape) != array.ndim or min(shape, default=1) < 1:
        raise ValueError(f"cannot resize an array of shape {array.shape} to {shape}")
    if tuple(array.shape) == shape:
        return array
    if kind == "nearest":
        out = array
        for axis, (old, new) in enumerate(zip(array.shape, shape, strict=True)):
            if old != new:
                out = np.take(out, nearest_indices(old, new), axis=axis)
        return np.ascontiguousarray(out)
    if array.ndim not in (1, 2, 3):
        raise ValueError(f"linear resizing takes 1-D to 3-D arrays, got shape {array.shape}")
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[array.ndim]
    values = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    out = F.interpolate(values, size=shape, mode=mode, align_corners=False)
    return np.ascontiguousarray(out[0, 0].numpy())


def nearest_indices(old: int, new: int) -> np.ndarray:
    """For each of ``new`` voxel centres, the index of the ``old`` voxel that contains it."""
    centres = (np.arange(new, dtype=np.float64) + 0.5) * (old / new)
    return np.clip(np.floor(centres).astype(np.int64), 0, old - 1)
