"""Two-view makers: turn a sample's ``image`` into ``image_1`` and ``image_2`` for the two networks.

DSAIF gives one network a Max-tree filtered view and the other a Min-tree filtered view; the
ablations swap in other perturbations (one tree only, Gaussian blur, noise) or none (plain CPS).
All share one recipe, per sample: each view gets a random gamma contrast (probability
``gamma_p``), then with probability ``p`` the pair of perturbations is applied, the assignment of
perturbation to network drawn 50/50.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import Randomizable
from scipy.ndimage import gaussian_filter

# the area rule lives in a torch-free module (the planner uses it); its names stay importable here
from segssl.filters.area_threshold import (
    REFERENCE_AREA_THRESHOLD,  # noqa: F401
    REFERENCE_SHAPE,  # noqa: F401
    resolve_area_threshold,
    scaled_area_threshold,
    training_input_shape,
)

log = logging.getLogger(__name__)

Perturbation = Callable[[np.ndarray, np.random.RandomState], np.ndarray]

# a filtered view with fewer grey levels than this, from an input with many, has lost its
# structure (at 256 px the paper's views keep tens of levels)
COLLAPSED_LEVELS = 8
RICH_INPUT_LEVELS = 32
# views checked for collapse per filter and process: the first ones show a systematic problem,
# checking every view would cost a sort per sample
CHECKED_VIEWS = 8


def identity(image: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
    return image


class TreeFilter:
    """A Max-tree or Min-tree DSAIF filter as a view perturbation."""

    def __init__(self, tree: str, area_threshold: int = 50, connectivity: int | None = None):
        if tree not in ("max", "min"):
            raise ValueError(f"filter tree {tree!r}: expected 'max' or 'min'")
        self.tree, self.area_threshold, self.connectivity = tree, area_threshold, connectivity
        # samples may carry this view pre-computed (filter.cache=true)
        self.cache_key = f"image_{tree}"

    def params(self) -> dict[str, Any]:
        """What the view depends on (the view cache's key): not the collapse check's state."""
        return {
            "tree": self.tree,
            "area_threshold": self.area_threshold,
            "connectivity": self.connectivity,
            "cache_key": self.cache_key,
        }

    def __call__(self, image: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
        from segssl.filters import tree_filter

        view = tree_filter(image, self.tree, self.area_threshold, self.connectivity)
        checked = self.__dict__.get("_checked", 0)
        if checked < CHECKED_VIEWS:
            self._checked = checked + 1
            self._warn_if_collapsed(image, view)
        return view

    def _warn_if_collapsed(self, image: np.ndarray, view: np.ndarray) -> None:
        """Say once (per process) that the threshold wipes out this input's structure: the
        run would otherwise train on black or binary views without a word."""
        if self.__dict__.get("_warned"):
            return
        levels = np.unique(view).size
        if levels >= COLLAPSED_LEVELS or np.unique(image).size < RICH_INPUT_LEVELS:
            return
        self._warned = True
        shape = "x".join(map(str, np.shape(image)))
        share = self.area_threshold / max(np.size(image), 1)
        log.warning(
            "DSAIF %s-tree view of a %s image has collapsed to %d grey level(s): "
            "filter.area_threshold=%d removes every component under %.1f%% of the image (the "
            "paper: 50 of 256x256, 0.08%%). Use filter.area_threshold=auto (%d here) or a "
            "smaller number.",
            self.tree, shape, levels, self.area_threshold, 100 * share,
            scaled_area_threshold(np.shape(image)),
        )  # fmt: skip


class GaussianBlur:
    """Blur with a sigma drawn per call: an ablation that removes detail without structure."""

    def __init__(self, sigma_range: Sequence[float] = (0.5, 1.5)):
        self.sigma_range = tuple(sigma_range)

    def __call__(self, image: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
        return gaussian_filter(image, sigma=rng.uniform(*self.sigma_range)).astype(np.float32)


class GaussianNoise:
    """Additive noise scaled to the image's intensity range: the classic unstructured view."""

    def __init__(self, std: float = 0.1):
        self.std = std

    def __call__(self, image: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
        scale = float(image.max() - image.min()) or 1.0
        noise = rng.normal(0.0, self.std * scale, size=image.shape)
        return (image + noise).astype(np.float32)


def random_gamma(image: np.ndarray, gamma: float) -> np.ndarray:
    """Gamma contrast on the image's own range, so it also works on z-scored data."""
    low, high = float(image.min()), float(image.max())
    if high <= low:
        return image
    out = np.subtract(image, low, dtype=np.float32)
    out *= 1.0 / (high - low)
    np.power(out, gamma, out=out)
    out *= high - low
    out += low
    return out


class TwoViews(Randomizable):
    """Make ``image_1``/``image_2`` from ``image`` (channel-first tensor or array).

    A perturbation with a ``cache_key`` (the tree filters) is read from the sample when the data
    module pre-computed it (``cache=True``): the sample then carries that view, channel first
    like ``image`` and transformed with it, under the key itself (``cache_keys``: ``image_max``,
    ``image_min``); the output drops those keys, so batches hold the same keys either way. Its
    gamma is then applied after the filter instead of before, the same image up to quantisation
    since the filter commutes with gamma.

    ``rotate_view_2`` is DSAIF-SEMI's 3-D detail: when the pair is perturbed, network 2's image
    is rotated by ``k`` x 90 degrees in the first two spatial axes (H, W), ``k`` uniform in 0..3
    per sample, before its filter; ``k`` travels with the sample as ``rot_k_2`` (0 when not
    perturbed) and the method rotates network 2's logits back (``rotate_back``) before any loss.
    A cached view is rotated after the filter instead: the tree filters commute with rot90
    exactly, so both give the same view.
    """

    def __init__(
        self,
        view_a: Perturbation = identity,
        view_b: Perturbation = identity,
        p: float = 0.5,
        gamma_p: float = 0.0,
        gamma_range: Sequence[float] = (0.5, 1.5),
        cache: bool = False,
        cache_dir: str | None = None,
        rotate_view_2: bool = False,
    ) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"filter.p={p}: expected a probability in [0, 1]")
        if not 0.0 <= gamma_p <= 1.0:
            raise ValueError(f"filter.gamma_p={gamma_p}: expected a probability in [0, 1]")
        self.view_a, self.view_b = view_a, view_b
        self.p, self.gamma_p, self.gamma_range = p, gamma_p, tuple(gamma_range)
        self.cache, self.cache_dir = cache, cache_dir
        self.rotate_view_2 = bool(rotate_view_2)

    # -- pre-computation (filter.cache=true) -------------------------------------------------
    @property
    def cache_keys(self) -> list[str]:
        """Sample keys of the pre-computable views (empty if nothing is worth caching)."""
        keys = [getattr(v, "cache_key", None) for v in (self.view_a, self.view_b)]
        return [k for k in keys if k is not None]

    def precompute(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """The cacheable views of one raw image."""
        rng = np.random.RandomState(0)
        return {
            v.cache_key: v(image, rng)
            for v in (self.view_a, self.view_b)
            if getattr(v, "cache_key", None)
        }

    def cache_params(self) -> dict[str, Any]:
        return {
            k: v.params() if hasattr(v, "params") else getattr(v, "__dict__", str(v))
            for k, v in (("view_a", self.view_a), ("view_b", self.view_b))
        }

    # -- per sample ------------------------------------------------------------------------
    def randomize(self, data: Any = None) -> None:
        self._gammas = [
            self.R.uniform(*self.gamma_range) if self.R.rand() < self.gamma_p else None
            for _ in range(2)
        ]
        self._perturb = self.R.rand() < self.p
        self._swap = self.R.rand() < 0.5
        # drawn after the others, so that rotate_view_2=false keeps the random stream as it was;
        # DSAIF-SEMI rotates only when it filters (k = 0 otherwise)
        self._rot_k = int(self.R.randint(4)) if self.rotate_view_2 and self._perturb else 0

    def _make_view(
        self,
        sample: dict,
        image: np.ndarray,
        perturb: Perturbation | None,
        gamma: float | None,
        rot_k: int = 0,
    ) -> np.ndarray:
        cached = getattr(perturb, "cache_key", None)
        if cached is not None and cached in sample:
            view = rotate_spatial(as_array(sample[cached])[0], rot_k)
            return view if gamma is None else random_gamma(view, gamma)
        view = image[0] if gamma is None else random_gamma(image[0], gamma)
        view = rotate_spatial(view, rot_k)
        return view if perturb is None else perturb(view, self.R)

    def __call__(self, sample: dict) -> dict:
        self.randomize()
        image = as_array(sample["image"])
        if self.rotate_view_2:
            check_rotatable(image.shape[1:])
        views = []
        for k, gamma in enumerate(self._gammas):
            perturb = (self.view_a, self.view_b)[k ^ int(self._swap)] if self._perturb else None
            view = self._make_view(sample, image, perturb, gamma, self._rot_k if k == 1 else 0)
            views.append(torch.as_tensor(np.ascontiguousarray(view, dtype=np.float32))[None])
        cached = set(self.cache_keys)  # read here, not batched
        out = {key: value for key, value in sample.items() if key not in cached}
        out["image"] = torch.as_tensor(image[:1])
        out["image_1"], out["image_2"] = views
        if self.rotate_view_2:
            out["rot_k_2"] = self._rot_k
        return out


def rotate_spatial(image: np.ndarray, k: int) -> np.ndarray:
    """``image`` (H, W[, D]) rotated by ``k`` x 90 degrees in (H, W), contiguous (the tree
    filters read memory in order)."""
    return image if k % 4 == 0 else np.ascontiguousarray(np.rot90(image, k, axes=(0, 1)))


def check_rotatable(spatial_shape: Sequence[int], setting: str = "the training input") -> None:
    """Refuse a non-square (H, W): a quarter turn would change the shape of network 2's view,
    and the batch could not be stacked (DSAIF-SEMI's LA patches are 112x112 in-plane)."""
    shape = tuple(int(s) for s in spatial_shape)
    if len(shape) < 2 or shape[0] != shape[1]:
        raise ValueError(
            f"filter.rotate_view_2=true rotates network 2's view by k x 90 degrees in the first "
            f"two spatial axes, which needs them square; {setting} is "
            f"{'x'.join(map(str, shape))}. Use a patch square in (H, W) or "
            "filter.rotate_view_2=false."
        )


def rotate_back(logits: torch.Tensor, rot_k: torch.Tensor) -> torch.Tensor:
    """Undo ``rotate_spatial`` on network outputs (B, C, H, W[, D]) with each sample's ``rot_k``
    (B,): every turn is computed for the whole batch and selected per sample, so the step reads
    nothing back from the device and gradients flow as through any rot90."""
    k = torch.as_tensor(rot_k, device=logits.device).reshape(-1) % 4
    if k.numel() != logits.shape[0]:
        raise ValueError(
            f"rot_k_2 holds {k.numel()} rotations for {logits.shape[0]} samples of network 2"
        )
    out = logits
    select = (-1,) + (1,) * (logits.ndim - 1)
    for turns in (1, 2, 3):
        back = torch.rot90(logits, -turns, dims=(2, 3))
        out = torch.where((k == turns).reshape(select), back, out)
    return out


def as_array(image: Any) -> np.ndarray:
    return image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)


def dsaif_views(
    p: float = 0.5,
    area_threshold: int | str | None = "auto",
    connectivity: int | None = None,
    trees: Sequence[str] = ("max", "min"),
    gamma_p: float = 0.5,
    gamma_range: Sequence[float] = (0.5, 1.5),
    cache: bool = False,
    cache_dir: str | None = None,
    image_size: int | None = None,
    patch_size: Sequence[int] | None = None,
    rotate_view_2: bool = False,
) -> TwoViews:
    """DSAIF views; ``trees=["max"]`` or ``["min"]`` are the one-tree ablations.

    ``area_threshold``: pixels (voxels), or ``"auto"`` for the paper's 50 at 256x256 scaled
    to the training input, ``patch_size`` in 3-D, else ``image_size`` squared.
    ``rotate_view_2``: DSAIF-SEMI's rotation of network 2's view (see ``TwoViews``).
    """
    shape = training_input_shape(image_size, patch_size)
    if rotate_view_2 and shape is not None:
        given = (
            f"data.patch_size={list(patch_size)}" if patch_size else f"data.image_size={image_size}"
        )
        check_rotatable(shape, given)
    pixels, why = resolve_area_threshold(area_threshold, shape)
    log.info("DSAIF area threshold: %d pixels (%s)", pixels, why)
    filters = [TreeFilter(t, pixels, connectivity) for t in trees]
    if not 1 <= len(filters) <= 2:
        raise ValueError(f"filter.trees={list(trees)}: expected one or two of 'max', 'min'")
    view_b = filters[1] if len(filters) == 2 else identity
    return TwoViews(
        filters[0],
        view_b,
        p=p,
        gamma_p=gamma_p,
        gamma_range=gamma_range,
        cache=cache,
        cache_dir=cache_dir,
        rotate_view_2=rotate_view_2,
    )
