"""Two-view makers: turn a sample's ``image`` into ``image_1`` and ``image_2`` for the two networks.

DSAIF gives one network a Max-tree filtered view and the other a Min-tree filtered view; the
ablations swap in other perturbations (one tree only, Gaussian blur, noise) or none (plain CPS).
All share one recipe, per sample: each view gets a random gamma contrast (probability
``gamma_p``), then with probability ``p`` the pair of perturbations is applied, the assignment of
perturbation to network drawn 50/50.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import Randomizable
from scipy.ndimage import gaussian_filter

Perturbation = Callable[[np.ndarray, np.random.RandomState], np.ndarray]


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

    def __call__(self, image: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
        from segssl.filters import tree_filter

        return tree_filter(image, self.tree, self.area_threshold, self.connectivity)


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
    module pre-computed it (``cache=True``): the data module stacks the views of ``cache_keys``
    behind the raw image as channels 1, 2, ... Its gamma is then applied after the filter instead
    of before, the same image up to quantisation since the filter commutes with gamma.
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
    ) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"filter.p={p}: expected a probability in [0, 1]")
        if not 0.0 <= gamma_p <= 1.0:
            raise ValueError(f"filter.gamma_p={gamma_p}: expected a probability in [0, 1]")
        self.view_a, self.view_b = view_a, view_b
        self.p, self.gamma_p, self.gamma_range = p, gamma_p, tuple(gamma_range)
        self.cache, self.cache_dir = cache, cache_dir

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
            k: getattr(v, "__dict__", str(v))
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

    def _make_view(self, image: np.ndarray, perturb: Perturbation | None, gamma: float | None):
        cached = getattr(perturb, "cache_key", None)
        if cached is not None and image.shape[0] > 1:
            view = image[1 + self.cache_keys.index(cached)]
            return view if gamma is None else random_gamma(view, gamma)
        view = image[0] if gamma is None else random_gamma(image[0], gamma)
        return view if perturb is None else perturb(view, self.R)

    def __call__(self, sample: dict) -> dict:
        self.randomize()
        image = as_array(sample["image"])
        views = []
        for k, gamma in enumerate(self._gammas):
            perturb = (self.view_a, self.view_b)[k ^ int(self._swap)] if self._perturb else None
            view = self._make_view(image, perturb, gamma)
            views.append(torch.as_tensor(np.ascontiguousarray(view, dtype=np.float32))[None])
        out = dict(sample)
        out["image"] = torch.as_tensor(image[:1])
        out["image_1"], out["image_2"] = views
        return out


def as_array(image: Any) -> np.ndarray:
    return image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)


def dsaif_views(
    p: float = 0.5,
    area_threshold: int = 50,
    connectivity: int | None = None,
    trees: Sequence[str] = ("max", "min"),
    gamma_p: float = 0.5,
    gamma_range: Sequence[float] = (0.5, 1.5),
    cache: bool = False,
    cache_dir: str | None = None,
) -> TwoViews:
    """DSAIF views; ``trees=["max"]`` or ``["min"]`` are the one-tree ablations."""
    filters = [TreeFilter(t, area_threshold, connectivity) for t in trees]
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
    )
