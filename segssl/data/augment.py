"""SSL4MIS's 2-D slice augmentation as one MONAI dictionary transform with a single resampling.

MONAI's chain (``Resized`` then ``RandRotate90d``/``RandFlipd`` or ``RandRotated``) resamples
each key two or three times and costs more per slice than the network step of a batch on a GPU.
Here resize and rotation are one affine grid and one ``grid_sample`` for the image and every
pre-computed filtered view (``view_keys``, each under its own key, sampled together) plus one for
the label, and rot90/flip are exact index permutations. Sampling positions are those of
``F.interpolate`` with ``align_corners=False`` (pixel centres), so without rotation the image equals
MONAI's bilinear ``Resized``; labels are sampled nearest-neighbour at the same positions as the
image (round to the nearest pixel centre), which keeps them aligned with the image.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F
from monai.transforms import MapTransform, RandomizableTransform

BRANCHES = ("rot_flip", "rotate", "identity")
# SSL4MIS's recipe, shared with the batched device path (segssl/data/device_batches.py)
BRANCH_WEIGHTS = (0.5, 0.25, 0.25)
ROTATE_DEGREES = 20.0


@lru_cache(maxsize=16)
def identity_grid(size: tuple[int, int]) -> torch.Tensor:
    """Pixel centres of a ``size`` output in normalised coordinates (built once per size)."""
    theta = torch.eye(2, 3, dtype=torch.float32)[None]
    return F.affine_grid(theta, [1, 1, *size], align_corners=False)


class RandSliceAugmentd(RandomizableTransform, MapTransform):
    """Resize to ``image_size`` and, per sample, choose SSL4MIS's branch: a random rot90 with
    random flips (weight 0.5), a random rotation in ``[-rotate_degrees, rotate_degrees]``
    (0.25), or nothing (0.25). ``view_keys``: keys of pre-computed views (channel first, the
    image's size), resampled bilinearly with the image by the same draw; all of them required."""

    def __init__(
        self,
        image_size: int | Sequence[int],
        image_key: Hashable = "image",
        label_key: Hashable = "label",
        rotate_degrees: float = ROTATE_DEGREES,
        weights: Sequence[float] = BRANCH_WEIGHTS,
        augment: bool = True,
        view_keys: Sequence[Hashable] = (),
    ) -> None:
        self.view_keys = tuple(view_keys)
        MapTransform.__init__(
            self, [image_key, *self.view_keys, label_key], allow_missing_keys=True
        )
        RandomizableTransform.__init__(self, prob=1.0)
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.size = tuple(int(s) for s in size)
        self.image_key, self.label_key = image_key, label_key
        self.rotate_degrees, self.augment = rotate_degrees, augment
        total = float(sum(weights))
        self.weights = [w / total for w in weights]

    def randomize(self, data: object = None) -> None:
        u, branch = self.R.rand(), 0
        while branch < 2 and u >= sum(self.weights[: branch + 1]):
            branch += 1
        self.branch = BRANCHES[branch] if self.augment else "identity"
        self.k = int(self.R.randint(4))
        self.flips = [bool(self.R.rand() < 0.5), bool(self.R.rand() < 0.5)]
        angle = self.R.uniform(-self.rotate_degrees, self.rotate_degrees)
        self.angle = math.radians(angle)

    def _grid(self) -> torch.Tensor:
        """Sampling grid of the output in the input's normalised coordinates (rotated about
        the centre in the rotate branch)."""
        grid = identity_grid(self.size)
        if self.branch != "rotate":
            return grid
        c, s = math.cos(self.angle), math.sin(self.angle)
        rotation = torch.tensor([[c, -s], [s, c]], dtype=torch.float32)  # as MONAI Rotate
        return grid @ rotation

    def __call__(self, data: dict) -> dict:
        self.randomize()
        out = dict(data)
        keys = (self.image_key, *self.view_keys)
        parts = [torch.as_tensor(out[key], dtype=torch.float32) for key in keys]
        # one resampling for the image and its views: their channels side by side
        image = parts[0] if len(parts) == 1 else torch.cat(parts)
        grid = self._grid()
        sampled = self._finish(self._sample(image, grid, "bilinear"))
        if len(parts) == 1:
            out[self.image_key] = sampled
        else:
            split = sampled.split([part.shape[0] for part in parts])
            out.update(zip(keys, split, strict=True))
        if self.label_key in out:
            label = torch.as_tensor(out[self.label_key])
            label = label[None] if label.ndim == 2 else label
            sampled = self._sample(label.float(), grid, "nearest")
            out[self.label_key] = self._finish(sampled).round().long()
        return out

    def _sample(self, x: torch.Tensor, grid: torch.Tensor, mode: str) -> torch.Tensor:
        """One resampling: without rotation, border clamping reproduces ``F.interpolate``
        exactly; with it, outside the image is zero as in MONAI's ``RandRotated``."""
        if self.branch != "rotate" and tuple(x.shape[-2:]) == self.size:
            return x
        padding = "zeros" if self.branch == "rotate" else "border"
        return F.grid_sample(x[None], grid, mode=mode, padding_mode=padding, align_corners=False)[0]

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        if self.branch != "rot_flip":
            return x.contiguous()
        x = torch.rot90(x, self.k, dims=(-2, -1))
        dims = [d for d, flip in zip((-2, -1), self.flips, strict=True) if flip]
        return (torch.flip(x, dims) if dims else x).contiguous()
