"""Training augmentation as MONAI dictionary transforms: SSL4MIS's recipe for 2-D slices,
UA-MT's for 3-D patches.

With pre-computed filtered views (``filter.cache=true``) a sample carries each view under its own
key beside ``image``; the builders take those keys (``view_keys``, the views' ``cache_keys``)
so that one random spatial draw moves the image, the label and every view together.
"""

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

IMAGE, LABEL = "image", "label"


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
    view_keys: Sequence[str] = (),
) -> Transform:
    """Resize to the training size, then SSL4MIS's augmentation: half the time a random rot90 and
    flip, a quarter a random rotation in [-rotate_degrees, rotate_degrees], else nothing; then the
    two views. Items hold ``image`` as (C, H, W), each pre-computed view of ``view_keys`` as
    (1, H, W) (the same spatial transform as the image, bilinear) and an optional ``label``
    (H, W), interpolated nearest-neighbour; unlabeled items have no ``label`` key."""
    images = (IMAGE, *view_keys)
    steps: list = [
        EnsureChannelFirstd(LABEL, channel_dim="no_channel", allow_missing_keys=True),
        RandSliceAugmentd(
            image_size, rotate_degrees=rotate_degrees, augment=augment, view_keys=view_keys
        ),
    ]
    steps += [
        EnsureTyped(images, dtype=torch.float32, track_meta=False),
        EnsureTyped(LABEL, dtype=torch.long, track_meta=False, allow_missing_keys=True),
    ]
    if views is not None:
        steps.append(views)
    return WithoutMetadata(Compose(steps))


def patch_train_transforms(
    patch_size: Sequence[int],
    views: Callable[[dict], dict] | None = None,
    augment: bool = True,
    view_keys: Sequence[str] = (),
) -> Transform:
    """3-D training items, UA-MT's LA recipe: a random rot90 in the first two spatial axes (k
    uniform in 0..3) and a flip along one of them (both drawn when ``augment``), then
    zero-padding up to ``patch_size`` where the volume is smaller and a random crop of exactly
    ``patch_size``; then the two views (on the 3-D crop). Rotating before cropping, as UA-MT
    does, keeps every crop the configured shape even when the patch is not square in those axes.
    Items hold ``image`` as (C, H, W, D), each pre-computed view of ``view_keys`` as
    (1, H, W, D) (rotated, flipped, padded and cropped with the image) and an optional
    ``label`` (H, W, D)."""
    size = tuple(int(s) for s in patch_size)
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"data.patch_size={list(patch_size)}: expected 3 positive ints")
    images = (IMAGE, *view_keys)
    # the image first: the crop's position is drawn from the first key's shape
    keys = (*images, LABEL)
    steps: list = [EnsureChannelFirstd(LABEL, channel_dim="no_channel", allow_missing_keys=True)]
    if augment:
        steps += [
            # prob 3/4 of k in 1..3 = k uniform in 0..3, as np.random.randint(0, 4)
            RandRotate90d(keys, prob=0.75, max_k=3, spatial_axes=(0, 1), allow_missing_keys=True),
            OneOf(
                [
                    RandFlipd(keys, prob=1.0, spatial_axis=axis, allow_missing_keys=True)
                    for axis in (0, 1)
                ]
            ),
        ]
    steps += [
        SpatialPadd(keys, spatial_size=size, allow_missing_keys=True),
        RandSpatialCropd(keys, roi_size=size, random_size=False, allow_missing_keys=True),
        EnsureTyped(images, dtype=torch.float32, track_meta=False),
        EnsureTyped(LABEL, dtype=torch.long, track_meta=False, allow_missing_keys=True),
    ]
    if views is not None:
        steps.append(views)
    return WithoutMetadata(Compose(steps))
