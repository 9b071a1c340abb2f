"""Training augmentation as MONAI dictionary transforms (SSL4MIS's recipe for 2-D slices)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    Identityd,
    OneOf,
    RandFlipd,
    RandRotate90d,
    RandRotated,
    Resized,
)

KEYS = ("image", "label")


def slice_train_transforms(
    image_size: int,
    views: Callable[[dict], dict] | None = None,
    augment: bool = True,
    rotate_degrees: float = 20.0,
) -> Compose:
    """Resize to the training size, then SSL4MIS's augmentation: half the time a random rot90 and
    flip, a quarter a random rotation in [-rotate_degrees, rotate_degrees], else nothing; then the
    two views. Labels use nearest-neighbour interpolation throughout; unlabeled samples simply
    have no ``label`` key."""
    size = (image_size, image_size)
    steps: list = [
        EnsureChannelFirstd(KEYS, channel_dim="no_channel", allow_missing_keys=True),
        Resized(KEYS, spatial_size=size, mode=("bilinear", "nearest"), allow_missing_keys=True),
    ]
    if augment:
        rot_flip = Compose(
            [
                RandRotate90d(KEYS, prob=1.0, max_k=3, allow_missing_keys=True),
                RandFlipd(KEYS, prob=0.5, spatial_axis=0, allow_missing_keys=True),
                RandFlipd(KEYS, prob=0.5, spatial_axis=1, allow_missing_keys=True),
            ]
        )
        angle = math.radians(rotate_degrees)
        rotate = RandRotated(
            KEYS,
            range_x=angle,
            prob=1.0,
            mode=("bilinear", "nearest"),
            padding_mode="zeros",
            allow_missing_keys=True,
        )
        steps.append(
            OneOf(
                [rot_flip, rotate, Identityd(KEYS, allow_missing_keys=True)],
                weights=[0.5, 0.25, 0.25],
            )
        )
    steps += [
        EnsureTyped("image", dtype=torch.float32, track_meta=False),
        EnsureTyped("label", dtype=torch.long, track_meta=False, allow_missing_keys=True),
    ]
    if views is not None:
        steps.append(views)
    return Compose(steps)


def patch_train_transforms(
    patch_size: Sequence[int],
    views: Callable[[dict], dict] | None = None,
    augment: bool = True,
) -> Compose:
    """3-D training items: random crops of ``patch_size`` (padded if the volume is smaller)."""
    raise NotImplementedError("3-D training transforms are not built yet")
