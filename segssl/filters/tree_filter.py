"""DSAIF: the dual structure-aware image filter (Gu et al., MedIA 2024, arXiv 2312.07264).

Each view keeps an image's *branching* structure and flattens everything else. The recipe, for one
image ``x`` and one tree kind (Max-tree for the ``"max"`` view, Min-tree for the ``"min"`` view):

1. quantise: ``u = ((x - lo) / (hi - lo + 1e-8) * 255).astype(uint8)`` with ``lo, hi`` the image's
   min and max, computed on the float32 version of the input (the output dtype);
2. build the component tree of ``u`` on the pixel adjacency graph (8/26-connectivity by default);
3. area opening (max) / closing (min): every node of area ``< area_threshold`` is removed, its
   pixels take the level of their closest kept ancestor;
4. on the tree of *that* image, every non-root node whose parent has exactly one component child
   (pixels are not counted) is removed; each pixel takes the level of its closest kept ancestor;
5. map back in float32, as the authors' code does: ``u.astype(float32) / 255 * (hi - lo) + lo``.

Speed. The literal recipe builds two trees per view. We build one: area is increasing, so the nodes
removed in step 3 (area opening of a Max-tree, area closing of a Min-tree) are whole subtrees, and
the tree of the area-filtered image is exactly the first tree with those subtrees deleted (same
components, same levels; a kept node's parent is kept). Its kept-children counts are a
``bincount`` over the kept nodes' parents, and steps 3 and 4 collapse into a single
``reconstruct_leaf_data``. Trees are built on an implicit 1-D graph over the padded image (see
:func:`padded_grid_graph`), cached per (shape, connectivity): higra builds a tree on it
several times faster than on its standard explicit grid graph.
"""

from __future__ import annotations

import itertools
from functools import lru_cache
from typing import Literal

import higra as hg
import numpy as np

TreeKind = Literal["max", "min"]

LEVELS = 255
EPS = 1e-8
DEFAULT_CONNECTIVITY = {2: 8, 3: 26}
ALLOWED_CONNECTIVITY = {2: (4, 8), 3: (6, 26)}


# ---------------------------------------------------------------------------------------------
# argument checks


def check_tree(tree: str) -> str:
    """Reject anything but the two tree kinds the filter knows."""
    if tree not in ("max", "min"):
        raise ValueError(f"tree={tree!r}: expected 'max' or 'min'")
    return tree


def check_connectivity(ndim: int, connectivity: int | None) -> int:
    """Resolve the default (8 in 2-D, 26 in 3-D) and refuse neighbourhoods we do not build."""
    if connectivity is None:
        return DEFAULT_CONNECTIVITY[ndim]
    allowed = ALLOWED_CONNECTIVITY[ndim]
    if isinstance(connectivity, bool) or connectivity not in allowed:
        raise ValueError(
            f"connectivity={connectivity!r}: expected one of {allowed} or None for a {ndim}-D image"
        )
    return int(connectivity)


def check_area_threshold(area_threshold: int) -> int:
    """Area is a pixel count, so the threshold must be a non-negative integer."""
    if isinstance(area_threshold, bool) or not isinstance(area_threshold, int | np.integer):
        raise ValueError(f"area_threshold={area_threshold!r}: expected a non-negative integer")
    if area_threshold < 0:
        raise ValueError(f"area_threshold={area_threshold!r}: expected a non-negative integer")
    return int(area_threshold)


def check_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Return the image as float32 (the recipe's working dtype) after checking shape and values."""
    array = np.asarray(image)
    if array.ndim not in (2, 3):
        raise ValueError(f"{name} has shape {array.shape}: expected a 2-D or 3-D array")
    if array.size == 0:
        raise ValueError(f"{name} has shape {array.shape}: expected a non-empty array")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise ValueError(f"{name} has dtype {array.dtype}: expected a real numeric array")
    if np.iscomplexobj(array):
        raise ValueError(f"{name} has dtype {array.dtype}: expected a real numeric array")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or inf values: expected finite intensities")
    return array


def check_levels(levels: np.ndarray) -> np.ndarray:
    """The integer core works on already-quantised images of any integer dtype."""
    array = np.asarray(levels)
    if array.ndim not in (2, 3):
        raise ValueError(f"levels has shape {array.shape}: expected a 2-D or 3-D array")
    if array.size == 0:
        raise ValueError(f"levels has shape {array.shape}: expected a non-empty array")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"levels has dtype {array.dtype}: expected an integer array")
    return array


# ---------------------------------------------------------------------------------------------
# quantisation


def quantise(image: np.ndarray) -> tuple[np.ndarray, np.float32, np.float32]:
    """Step 1 of the recipe, exactly as written (float32 arithmetic, truncating cast).

    Returns ``(u, lo, hi)``. In float32 the ``1e-8`` vanishes for any range above ~0.2, and the
    truncating cast means a value exactly on a level (e.g. ``k / 255`` on a [0, 1] image) may land
    one level lower; that is the recipe, kept as is so every caller sees the same levels.
    """
    x = check_image(image)
    lo, hi = x.min(), x.max()
    return _quantise(x, lo, hi), lo, hi


def _quantise(x: np.ndarray, lo: np.float32, hi: np.float32) -> np.ndarray:
    return ((x - lo) / (hi - lo + EPS) * LEVELS).astype(np.uint8)


def dequantise(levels: np.ndarray, lo: np.float32, hi: np.float32) -> np.ndarray:
    """Step 5 exactly as the authors' code: ``levels.astype(float32) / 255 * (hi - lo) + lo``,
    every operation in float32 and in that order, so the output equals theirs bit for bit (the
    same formula in float64, then cast, differs in the last bit on most slices).

    Through a 256-entry lookup table: each entry goes through the same float32 operations as the
    elementwise formula, so it is bit-identical and an order of magnitude faster on volumes.
    """
    lo, hi = np.float32(lo), np.float32(hi)
    table = np.arange(LEVELS + 1, dtype=np.float32) / np.float32(LEVELS) * (hi - lo) + lo
    return table[levels]


# ---------------------------------------------------------------------------------------------
# graphs


def neighbour_offsets(ndim: int, connectivity: int) -> np.ndarray:
    """Offsets of the pixel neighbourhood: faces only (4/6) or the full 3^n - 1 cube (8/26)."""
    offsets = [o for o in itertools.product((-1, 0, 1), repeat=ndim) if any(o)]
    if connectivity == 2 * ndim:
        offsets = [o for o in offsets if sum(map(abs, o)) == 1]
    return np.asarray(offsets, dtype=np.int64)


@lru_cache(maxsize=64)
def padded_grid_graph(shape: tuple[int, ...], connectivity: int) -> hg.RegularGraph1d:
    """Implicit 1-D graph over the image padded by one pixel per side, cached per process.

    Each pixel's neighbours are ``index + offset`` with the neighbourhood's offsets turned into
    linear (C-order) strides of the padded shape. For an interior (real) pixel these are exactly its
    grid neighbours; only padding pixels see wrapped-around neighbours. Padding is filled with the
    root level (see :func:`_filter_on_graph`), so it never belongs to a non-root component and the
    wrap-around cannot connect anything. higra builds trees on this graph about 1.5-2x faster than
    on its n-D implicit grid graph (no per-neighbour coordinate arithmetic).
    """
    padded = tuple(size + 2 for size in shape)
    strides = np.array([int(np.prod(padded[axis + 1 :])) for axis in range(len(padded))])
    linear = neighbour_offsets(len(shape), connectivity) @ strides
    return hg.get_nd_regular_implicit_graph((int(np.prod(padded)),), linear[:, None])


# ---------------------------------------------------------------------------------------------
# the filter on one built tree


def _build_tree(
    graph: hg.RegularGraph1d, padded: np.ndarray, tree: str
) -> tuple[hg.Tree, np.ndarray]:
    build = hg.component_tree_max_tree if tree == "max" else hg.component_tree_min_tree
    return build(graph, padded.ravel())


def kept_nodes(
    parents: np.ndarray, num_leaves: int, area: np.ndarray | None, area_threshold: int
) -> np.ndarray:
    """Steps 3-4 as one node mask: True for the component nodes that survive both removals.

    ``area`` may be None when no node can fall below the threshold (``area_threshold <= 1``).
    Nodes are in higra's topological order: leaves first, root last.
    """
    root = parents.size - 1
    kept = np.ones(parents.size, dtype=bool) if area is None else area >= area_threshold
    kept[root] = True  # the root is never removed (higra's convention, and the recipe's)
    inner_parents = parents[num_leaves:root]
    inner_kept = kept[num_leaves:root]
    kept_children = np.bincount(inner_parents[inner_kept], minlength=parents.size)
    kept[num_leaves:root] = inner_kept & (kept_children[inner_parents] != 1)
    kept[:num_leaves] = False  # pixels are never "kept ancestors": they take a component's level
    return kept


def _filter_on_graph(
    levels: np.ndarray, graph: hg.RegularGraph1d, tree: str, area_threshold: int
) -> np.ndarray:
    """Steps 2-4 on one quantised image, using the padded graph of its shape.

    The padding takes the root's level (the minimum for a Max-tree, the maximum for a Min-tree):
    the padded tree is then the image's tree with the padding pixels as extra leaves of the root,
    so areas below the root, component-children counts and the reconstruction are unchanged.
    """
    root_level = levels.min() if tree == "max" else levels.max()
    padded = np.pad(levels, 1, mode="constant", constant_values=root_level)
    component_tree, altitudes = _build_tree(graph, padded, tree)
    area = hg.attribute_area(component_tree) if area_threshold > 1 else None
    keep = kept_nodes(component_tree.parents(), component_tree.num_leaves(), area, area_threshold)
    leaves = hg.reconstruct_leaf_data(component_tree, altitudes, ~keep)
    interior = (slice(1, -1),) * levels.ndim
    return np.asarray(leaves).reshape(padded.shape)[interior]


# ---------------------------------------------------------------------------------------------
# public API


def filter_levels(
    levels: np.ndarray,
    tree: TreeKind = "max",
    area_threshold: int = 50,
    connectivity: int | None = None,
) -> np.ndarray:
    """Steps 2-4 on an already-quantised integer image; same dtype and shape back.

    This is the exact, order-only part of the filter: it commutes with flips, 90-degree rotations
    and any strictly increasing relabelling of the levels, and it is idempotent.
    """
    array = check_levels(levels)
    check_tree(tree)
    conn = check_connectivity(array.ndim, connectivity)
    threshold = check_area_threshold(area_threshold)
    graph = padded_grid_graph(array.shape, conn)
    return _filter_on_graph(np.ascontiguousarray(array), graph, tree, threshold)


def tree_filter(
    image: np.ndarray,
    tree: TreeKind = "max",
    area_threshold: int = 50,
    connectivity: int | None = None,
) -> np.ndarray:
    """One DSAIF view (``"max"``: Max-tree, ``"min"``: Min-tree) of a 2-D or 3-D image, float32."""
    check_tree(tree)
    return _filter_views(image, (tree,), area_threshold, connectivity)[0]


def dual_tree_filter(
    image: np.ndarray, area_threshold: int = 50, connectivity: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Both DSAIF views ``(max_view, min_view)``, sharing validation, quantisation and graph."""
    max_view, min_view = _filter_views(image, ("max", "min"), area_threshold, connectivity)
    return max_view, min_view


def dual_tree_filter_batch(
    images: np.ndarray, area_threshold: int = 50, connectivity: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``dual_tree_filter`` over a leading batch axis, ``(B, H, W)`` or ``(B, D, H, W)``.

    Each image is normalised on its own range, exactly as a single call would; the grid graph is
    shared by the whole batch.
    """
    batch = np.asarray(images)
    if batch.ndim not in (3, 4) or batch.shape[0] == 0:
        raise ValueError(
            f"images has shape {batch.shape}: expected a non-empty batch (B, H, W) or (B, D, H, W)"
        )
    max_views = np.empty(batch.shape, dtype=np.float32)
    min_views = np.empty(batch.shape, dtype=np.float32)
    for index, image in enumerate(batch):
        max_views[index], min_views[index] = dual_tree_filter(image, area_threshold, connectivity)
    return max_views, min_views


def _filter_views(
    image: np.ndarray, trees: tuple[str, ...], area_threshold: int, connectivity: int | None
) -> list[np.ndarray]:
    """Validate once, quantise once, then filter each requested tree kind on one shared graph."""
    x = check_image(image)
    conn = check_connectivity(x.ndim, connectivity)
    threshold = check_area_threshold(area_threshold)
    lo, hi = x.min(), x.max()
    with np.errstate(over="ignore"):
        span = hi - lo
    if not np.isfinite(span):
        raise ValueError(f"image range {lo}..{hi} overflows float32: expected a finite range")
    if lo == hi:
        return [x.copy() for _ in trees]
    levels = _quantise(x, lo, hi)
    graph = padded_grid_graph(x.shape, conn)
    return [dequantise(_filter_on_graph(levels, graph, t, threshold), lo, hi) for t in trees]
