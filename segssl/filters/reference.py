"""Reference implementations of the DSAIF recipe: what the fast filter is checked against (the
tests) and timed against (``scripts/bench_filter.py``). Written for clarity, not speed; the
training path never imports them.

Two independent ways to compute what :mod:`segssl.filters.tree_filter` computes fast:

* :func:`reference_tree_filter` follows the recipe literally with plain higra: build the tree,
  area-filter with ``reconstruct_leaf_data``, **rebuild** the tree of the filtered image, remove
  the only children, reconstruct. Standard explicit adjacency graphs, built per call.
* :func:`naive_tree_filter` uses no higra at all: threshold sets labelled with
  ``scipy.ndimage.label``, one level at a time. Slow (use it on small images); it checks the
  higra reference itself.

Both share the recipe's quantisation, written out here again on purpose.
"""

from __future__ import annotations

import higra as hg
import numpy as np
from scipy import ndimage as ndi


def _quantise(image: np.ndarray) -> tuple[np.ndarray, np.float32, np.float32]:
    x = np.asarray(image).astype(np.float32)
    lo, hi = x.min(), x.max()
    return ((x - lo) / (hi - lo + 1e-8) * 255).astype(np.uint8), lo, hi


def _dequantise(u: np.ndarray, lo: np.float32, hi: np.float32) -> np.ndarray:
    # the authors' map back, elementwise and in float32 (max and min are float32 scalars)
    return u.astype(np.float32) / 255 * (hi - lo) + lo


def _default_connectivity(ndim: int, connectivity: int | None) -> int:
    return {2: 8, 3: 26}[ndim] if connectivity is None else connectivity


def _on_levels(image: np.ndarray, filter_levels) -> np.ndarray:
    """Quantise, run a level-domain filter, map back; constant images come back unchanged."""
    x = np.asarray(image).astype(np.float32)
    if x.min() == x.max():
        return x.copy()
    u, lo, hi = _quantise(x)
    return _dequantise(filter_levels(u), lo, hi)


# ---------------------------------------------------------------------------------------------
# plain higra reference


def reference_graph(shape: tuple[int, ...], connectivity: int, implicit: bool = False):
    """Higra's standard adjacency graph for an image shape (explicit unless ``implicit``)."""
    if connectivity in (4, 8, 6):
        kind = "implicit_graph" if implicit else "graph"
        return getattr(hg, f"get_{connectivity}_adjacency_{kind}")(shape)
    if connectivity == 26:
        cube = np.ones((3, 3, 3), dtype=np.int64)
        cube[1, 1, 1] = 0
        build = hg.get_nd_regular_implicit_graph if implicit else hg.get_nd_regular_graph
        return build(shape, hg.mask_2_neighbours(cube))
    raise ValueError(f"connectivity={connectivity!r}: expected 4, 8, 6 or 26")


def reference_filter_levels(
    u: np.ndarray, tree: str, area_threshold: int, connectivity: int, graph=None
) -> np.ndarray:
    """Steps 2-4 of the recipe on a quantised image, literally, with two tree builds."""
    if graph is None:
        graph = reference_graph(u.shape, connectivity)
    build = {"max": hg.component_tree_max_tree, "min": hg.component_tree_min_tree}[tree]

    # steps 2-3: tree of the image, area opening / closing
    t1, alt1 = build(graph, u.ravel())
    small = hg.attribute_area(t1) < area_threshold
    area_filtered = hg.reconstruct_leaf_data(t1, alt1, small)

    # step 4: tree of the area-filtered image, remove nodes without a component sibling
    t2, alt2 = build(graph, area_filtered)
    parents = t2.parents()
    n_leaves, root = t2.num_leaves(), t2.root()
    component_children = np.zeros(t2.num_vertices(), dtype=np.int64)
    np.add.at(component_children, parents[n_leaves:root], 1)
    deleted = np.zeros(t2.num_vertices(), dtype=bool)
    deleted[n_leaves:root] = component_children[parents[n_leaves:root]] == 1
    return hg.reconstruct_leaf_data(t2, alt2, deleted).reshape(u.shape)


def reference_tree_filter(
    image: np.ndarray,
    tree: str = "max",
    area_threshold: int = 50,
    connectivity: int | None = None,
    graph=None,
) -> np.ndarray:
    """The whole recipe with plain higra; ``graph`` may be passed to skip building it."""
    x = np.asarray(image)
    conn = _default_connectivity(x.ndim, connectivity)
    return _on_levels(x, lambda u: reference_filter_levels(u, tree, area_threshold, conn, graph))


def reference_dual_tree_filter(
    image: np.ndarray, area_threshold: int = 50, connectivity: int | None = None, graph=None
) -> tuple[np.ndarray, np.ndarray]:
    """Two independent reference calls, as a user of the plain recipe would write it."""
    return (
        reference_tree_filter(image, "max", area_threshold, connectivity, graph),
        reference_tree_filter(image, "min", area_threshold, connectivity, graph),
    )


# ---------------------------------------------------------------------------------------------
# naive threshold-set implementation (no higra)


def _structure(ndim: int, connectivity: int) -> np.ndarray:
    rank = 1 if connectivity in (4, 6) else ndim
    return ndi.generate_binary_structure(ndim, rank)


def naive_area_opening(v: np.ndarray, area_threshold: int, structure: np.ndarray) -> np.ndarray:
    """Each pixel: the highest level at which its upper-set component has area >= threshold.

    The lowest level's set is the whole image (the root) and always counts.
    """
    values = np.unique(v)
    out = np.full_like(v, values[0])
    for level in values[1:]:
        labels, _ = ndi.label(v >= level, structure)
        big = np.bincount(labels.ravel()) >= area_threshold
        big[0] = False
        out[big[labels]] = level
    return out


def naive_remove_only_children(w: np.ndarray, structure: np.ndarray) -> np.ndarray:
    """Each pixel: the highest level at which its upper-set component is a kept tree node.

    Walking the levels upwards, a component equal (as a set) to its parent component one level
    down is the same node and inherits its fate; otherwise it is a new child node, kept iff the
    parent component splits into at least two components at this level.
    """
    values = np.unique(w)
    out = np.full_like(w, values[0])
    below = np.ones(w.shape, dtype=np.int64)  # the root: one component, label 1
    below_kept = {1: True}
    for level in values[1:]:
        labels, count = ndi.label(w >= level, structure)
        kept = {}
        for label in range(1, count + 1):
            mask = labels == label
            parent = below[mask][0]
            parent_mask = below == parent
            if np.array_equal(mask, parent_mask):
                kept[label] = below_kept[parent]
            else:
                siblings = np.unique(labels[parent_mask])
                kept[label] = np.count_nonzero(siblings) >= 2
            if kept[label]:
                out[mask] = level
        below, below_kept = labels, kept
    return out


def naive_filter_levels(
    u: np.ndarray, tree: str, area_threshold: int, connectivity: int
) -> np.ndarray:
    """Steps 2-4 from threshold sets; the Min-tree is the Max-tree of the negated image."""
    structure = _structure(u.ndim, connectivity)
    v = u.astype(np.int64) if tree == "max" else -u.astype(np.int64)
    result = naive_remove_only_children(naive_area_opening(v, area_threshold, structure), structure)
    return (result if tree == "max" else -result).astype(u.dtype)


def naive_tree_filter(
    image: np.ndarray, tree: str = "max", area_threshold: int = 50, connectivity: int | None = None
) -> np.ndarray:
    """The whole recipe without higra (small images only)."""
    x = np.asarray(image)
    conn = _default_connectivity(x.ndim, connectivity)
    return _on_levels(x, lambda u: naive_filter_levels(u, tree, area_threshold, conn))
