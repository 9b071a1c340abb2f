"""Training augmentation as MONAI dictionary transforms: SSL4MIS's recipe for 2-D slices,
UA-MT's for 3-D patches."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.data import get_track_meta, set_track_meta
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    OneOf,
    RandFlipd,
    Randomizable,
    RandRotate90d,
    RandSpatialCropd,
    SpatialPadd,
    Transform,
)

from segssl.data.augment import ROTATE_DEGREES, RandSliceAugmentd

KEYS = ("image", "label")


class WithoutMetadata(Randomizable, Transform):
    """Run a transform chain on plain tensors: MONAI's metadata tracking (MetaTensor) costs
    more than the augmentation itself on 2-D slices and nothing downstream reads it.
    Randomizable so that MONAI's data loaders seed the chain inside (per worker, from the seed)."""

    def __init__(self, transform: Compose) -> None:
        self.transform = transform

    def set_random_state(self, seed: int | None = None, state=None) -> WithoutMetadata:
        self.transform.set_random_state(seed=seed, state=state)
        return self

    def randomize(self, data: object = None) -> None:
        """Each transform of the chain draws its own parameters."""

    def __call__(self, data: dict) -> dict:
        previous = get_track_meta()
        set_track_meta(False)
        try:
            return self.transform(data)
        finally:
            set_track_meta(previous)


def slice_train_transforms(
    image_size: int,
    views: Callable[[dict], dict] | None = None,
    augment: bool = True,
    rotate_degrees: float = ROTATE_DEGREES,
) -> Transform:
    """Resize to the training size, then SSL4MIS's augmentation: half the time a random rot90 and
    flip, a quarter a random rotation in [-rotate_degrees, rotate_degrees], else nothing; then the
    two views. Items hold ``image`` as (C, H, W) — C > 1 when pre-computed filtered views are
    stacked behind the raw image, so they get exactly the same spatial transform — and an optional
    ``label`` (H, W), interpolated nearest-neighbour; unlabeled items have no ``label`` key."""
    steps: list = [
        EnsureChannelFirstd("label", channel_dim="no_channel", allow_missing_keys=True),
        RandSliceAugmentd(image_size, rotate_degrees=rotate_degrees, augment=augment),
    ]
    steps += [
        EnsureTyped("image", dtype=torch.float32, track_meta=False),
        EnsureTyped("label", dtype=torch.long, track_meta=False, allow_missing_keys=True),
    ]
    if views is not None:
        steps.append(views)
    return WithoutMetadata(Compose(steps))


def patch_train_transforms(
    patch_size: Sequence[int],
    views: Callable[[dict], dict] | None = None,
    augment: bool = True,
) -> Transform:
    """3-D training items, UA-MT's LA recipe: a random rot90 in the first two spatial axes (k
    uniform in 0..3) and a flip along one of them (both drawn when ``augment``), then
    zero-padding up to ``patch_size`` where the volume is smaller and a random crop of exactly
    ``patch_size``; then the two views (on the 3-D crop). Rotating before cropping, as UA-MT
    does, keeps every crop the configured shape even when the patch is not square in those axes.
    Items hold ``image`` as (C, H, W, D) (C > 1 with pre-computed views) and an optional
    ``label`` (H, W, D)."""
    size = tuple(int(s) for s in patch_size)
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"data.patch_size={list(patch_size)}: expected 3 positive ints")
    steps: list = [EnsureChannelFirstd("label", channel_dim="no_channel", allow_missing_keys=True)]
    if augment:
        steps += [
            # prob 3/4 of k in 1..3 = k uniform in 0..3, as np.random.randint(0, 4)
            RandRotate90d(KEYS, prob=0.75, max_k=3, spatial_axes=(0, 1), allow_missing_keys=True),
            OneOf(
                [
                    RandFlipd(KEYS, prob=1.0, spatial_axis=axis, allow_missing_keys=True)
                    for axis in (0, 1)
                ]
            ),
        ]
    steps += [
        SpatialPadd(KEYS, spatial_size=size, allow_missing_keys=True),
        RandSpatialCropd(KEYS, roi_size=size, random_size=False, allow_missing_keys=True),
        EnsureTyped("image", dtype=torch.float32, track_meta=False),
        EnsureTyped("label", dtype=torch.long, track_meta=False, allow_missing_keys=True),
    ]
    if views is not None:
        steps.append(views)
    return WithoutMetadata(Compose(steps))
