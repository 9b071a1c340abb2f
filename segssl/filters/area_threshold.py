"""The DSAIF area threshold scaled to the input: the paper's 50 pixels at 256x256 as a share.

One home for the rule that both the view makers (``filter.area_threshold=auto``) and the
planner (``segssl plan``) apply. Plain Python on purpose: the planner must not pay for torch,
MONAI or higra to compute one number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral

# The paper's area threshold: 50 pixels on 256x256 ACDC slices. ``area_threshold="auto"`` keeps
# that share of the training input's pixels (voxels in 3-D), so a smaller input keeps the same
# structures instead of losing everything under 50 pixels (at 32 px: one view black, one binary).
REFERENCE_AREA_THRESHOLD = 50
REFERENCE_SHAPE = (256, 256)


def scaled_area_threshold(input_shape: Sequence[int]) -> int:
    """The paper's 50 pixels at 256x256 as the same share of ``input_shape``'s pixels (or
    voxels): 50 at 256x256, 12 at 128x128, 3 at 64x64, 1 at 32x32; at least 1."""
    share = math.prod(input_shape) / math.prod(REFERENCE_SHAPE)
    return max(1, round(REFERENCE_AREA_THRESHOLD * share))


def training_input_shape(
    image_size: int | None = None, patch_size: Sequence[int] | None = None
) -> tuple[int, ...] | None:
    """The shape the filter sees in training: the 3-D patch if there is one, else the square
    2-D slice (``data.patch_size`` / ``data.image_size``); None when neither is known."""
    if patch_size:
        return tuple(int(s) for s in patch_size)
    if image_size:
        return (int(image_size), int(image_size))
    return None


def resolve_area_threshold(
    area_threshold: int | str | None, input_shape: Sequence[int] | None
) -> tuple[int, str]:
    """``filter.area_threshold`` as pixels, and why: a number is used as it is; ``auto`` (or
    null) scales the paper's 50 at 256x256 to ``input_shape``."""
    if area_threshold is None or area_threshold == "auto":
        if input_shape is None:
            return REFERENCE_AREA_THRESHOLD, "auto, no input size given: the paper's 50"
        pixels = scaled_area_threshold(input_shape)
        shape = "x".join(map(str, input_shape))
        return pixels, f"auto: the paper's 50 at 256x256 scaled to {shape}"
    # numbers.Integral takes int and numpy's integers (registered there) without importing numpy
    if isinstance(area_threshold, bool) or not isinstance(area_threshold, Integral):
        raise ValueError(
            f"filter.area_threshold={area_threshold!r}: expected 'auto' (the paper's 50 at "
            "256x256, scaled to data.image_size / data.patch_size) or a number of pixels >= 0"
        )
    if area_threshold < 0:
        raise ValueError(f"filter.area_threshold={area_threshold}: expected a number >= 0")
    return int(area_threshold), "as given"
