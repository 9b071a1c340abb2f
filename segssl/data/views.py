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
    unit = (image - low) / (high - low)
    return (unit**gamma * (high - low) + low).astype(np.float32)


class TwoViews(Randomizable):
    """Make ``image_1``/``image_2`` from ``image`` (channel-first tensor or array)."""

    def __init__(
        self,
        view_a: Perturbation = identity,
        view_b: Perturbation = identity,
        p: float = 0.5,
        gamma_p: float = 0.0,
        gamma_range: Sequence[float] = (0.5, 1.5),
    ) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"filter.p={p}: expected a probability in [0, 1]")
        if not 0.0 <= gamma_p <= 1.0:
            raise ValueError(f"filter.gamma_p={gamma_p}: expected a probability in [0, 1]")
        self.view_a, self.view_b = view_a, view_b
        self.p, self.gamma_p, self.gamma_range = p, gamma_p, tuple(gamma_range)

    def randomize(self, data: Any = None) -> None:
        self._gammas = [
            self.R.uniform(*self.gamma_range) if self.R.rand() < self.gamma_p else None
            for _ in range(2)
        ]
        self._perturb = self.R.rand() < self.p
        self._swap = self.R.rand() < 0.5

    def __call__(self, sample: dict) -> dict:
        self.randomize()
        image = sample["image"]
        array = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        views = []
        for k, gamma in enumerate(self._gammas):
            view = array[0] if gamma is None else random_gamma(array[0], gamma)
            if self._perturb:
                perturb = (self.view_a, self.view_b)[k ^ int(self._swap)]
                view = perturb(view, self.R)
            views.append(torch.as_tensor(np.ascontiguousarray(view, dtype=np.float32))[None])
        out = dict(sample)
        out["image_1"], out["image_2"] = views
        return out


def dsaif_views(
    p: float = 0.5,
    area_threshold: int = 50,
    connectivity: int | None = None,
    trees: Sequence[str] = ("max", "min"),
    gamma_p: float = 0.5,
    gamma_range: Sequence[float] = (0.5, 1.5),
) -> TwoViews:
    """DSAIF views; ``trees=["max"]`` or ``["min"]`` are the one-tree ablations."""
    filters = [TreeFilter(t, area_threshold, connectivity) for t in trees]
    if not 1 <= len(filters) <= 2:
        raise ValueError(f"filter.trees={list(trees)}: expected one or two of 'max', 'min'")
    view_b = filters[1] if len(filters) == 2 else identity
    return TwoViews(filters[0], view_b, p=p, gamma_p=gamma_p, gamma_range=gamma_range)
