"""DSAIF tree filters: exact agreement with two references, hand-made cases, properties, real data.

What holds exactly, and where (checked below):

* On quantised integer images (``filter_levels``) the filter depends only on the order of the
  levels and on adjacency, so it is exactly idempotent, anti-/extensive (max view <= u <= min
  view), self-dual (min = 255 - max(255 - u)), and commutes exactly with flips, 90-degree
  rotations and every strictly increasing relabelling of the levels.
* On float images (``tree_filter``) the recipe quantises with a truncating cast on the image's own
  min-max range. Flips and rotations commute exactly (quantisation is pointwise and range
  invariant). Strictly increasing intensity maps (gamma) do not: quantisation after the map puts
  different pixels in the same bin, so level sets, hence trees, differ. Re-filtering re-normalises
  the output's (smaller) range, so idempotence holds only up to a strictly increasing relabelling:
  same flat zones in the same order, values within one quantisation step.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from functools import cache
from pathlib import Path

import h5py
import higra as hg
import matplotlib.image as mpimg
import numpy as np
import pytest
from scipy import ndimage as ndi

from segssl.commands.filter import main as filter_cli
from segssl.data.image_io import read_slice
from segssl.filters import (
    dequantise,
    dual_tree_filter,
    dual_tree_filter_batch,
    filter_levels,
    quantise,
    tree_filter,
)
from segssl.filters.panel import (
    PANEL_TITLES,
    build_filter_panel,
    render_filter_panel,
)
from segssl.filters.reference import (
    naive_filter_levels,
    naive_tree_filter,
    reference_dual_tree_filter,
    reference_filter_levels,
    reference_graph,
    reference_tree_filter,
)
from segssl.filters.tree_filter import padded_grid_graph

SHARED = Path(
    os.environ.get("SEGSSL_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
)
ACDC = SHARED / "ACDC"
LA = SHARED / "LA"
CONNECTIVITIES = {2: (4, 8), 3: (6, 26)}
THRESHOLDS = (0, 1, 5, 50)


def random_images(seed: int, ndim: int, count: int) -> list[np.ndarray]:
    """Small images of three kinds: few levels (big plateaus), smooth noise, full-range noise."""
    rng = np.random.default_rng(seed)
    images = []
    for index in range(count):
        high = (7, 13) if ndim == 2 else (4, 7)
        shape = tuple(int(s) for s in rng.integers(2, high[1], size=ndim))
        kind = index % 3
        if kind == 0:
            image = rng.integers(0, int(rng.integers(2, 6)), size=shape).astype(np.float32)
        elif kind == 1:
            image = ndi.gaussian_filter(rng.random(shape), sigma=1.0).astype(np.float32)
        else:
            image = (rng.random(shape) * 200 - 50).astype(np.float32)
        images.append(image)
    return images


def quantised(seed: int, shape: tuple[int, ...], smooth: float = 1.0) -> np.ndarray:
    """A uint8 image with nested extrema, for the level-domain properties."""
    rng = np.random.default_rng(seed)
    return quantise(ndi.gaussian_filter(rng.random(shape), smooth))[0]


# ---------------------------------------------------------------------------------------------
# exact agreement: fast == higra reference == naive


@pytest.mark.parametrize("ndim", [2, 3])
def test_fast_equals_reference_equals_naive(ndim: int) -> None:
    images = random_images(seed=ndim, ndim=ndim, count=24)
    for image in images:
        for connectivity in CONNECTIVITIES[ndim]:
            for threshold in THRESHOLDS:
                for tree in ("max", "min"):
                    args = (image, tree, threshold, connectivity)
                    fast, ref = tree_filter(*args), reference_tree_filter(*args)
                    naive = naive_tree_filter(*args)
                    assert fast.dtype == ref.dtype == naive.dtype == np.float32
                    assert fast.shape == image.shape
                    assert np.array_equal(fast, ref), (image.shape, args[1:])
                    assert np.array_equal(ref, naive), (image.shape, args[1:])


def test_level_domain_agrees_on_larger_smooth_images() -> None:
    """Deeper trees (24x24, 10x10x10): the three level-domain implementations agree."""
    for shape, connectivity in (((24, 24), 8), ((24, 24), 4), ((10, 10, 10), 26)):
        u = quantised(seed=7, shape=shape, smooth=1.5)
        for threshold in (0, 5, 50):
            for tree in ("max", "min"):
                fast = filter_levels(u, tree, threshold, connectivity)
                ref = reference_filter_levels(u, tree, threshold, connectivity)
                assert np.array_equal(fast, ref)
                assert np.array_equal(fast, naive_filter_levels(u, tree, threshold, connectivity))


def test_dual_and_batch_equal_single_calls() -> None:
    rng = np.random.default_rng(3)
    batch = ndi.gaussian_filter(rng.random((4, 20, 24)), sigma=(0, 1.5, 1.5)).astype(np.float32)
    batch[2] *= 7.0  # a different range per image: each one is normalised on its own
    max_views, min_views = dual_tree_filter_batch(batch, area_threshold=5, connectivity=4)
    assert max_views.shape == min_views.shape == batch.shape
    for image, max_view, min_view in zip(batch, max_views, min_views, strict=True):
        assert np.array_equal(max_view, tree_filter(image, "max", 5, 4))
        assert np.array_equal(min_view, tree_filter(image, "min", 5, 4))
        dual = dual_tree_filter(image, 5, 4)
        assert np.array_equal(dual[0], max_view) and np.array_equal(dual[1], min_view)
        ref = reference_dual_tree_filter(image, 5, 4)
        assert np.array_equal(ref[0], max_view) and np.array_equal(ref[1], min_view)


def test_batch_reuses_the_cached_graph() -> None:
    batch = np.random.default_rng(0).random((3, 9, 11, 5)).astype(np.float32)
    dual_tree_filter_batch(batch, 5)
    before = padded_grid_graph.cache_info()
    dual_tree_filter_batch(batch, 5)
    after = padded_grid_graph.cache_info()
    assert after.misses == before.misses
    assert after.hits == before.hits + len(batch)


def test_area_filtered_tree_is_the_first_tree_minus_small_subtrees() -> None:
    """The fast path's premise: no second tree build is needed after the area filter."""

    def components(tree: hg.Tree, altitudes: np.ndarray, keep: np.ndarray) -> set:
        leaves_of = {node: [] for node in range(tree.num_leaves(), tree.num_vertices())}
        for leaf in range(tree.num_leaves()):
            for node in tree.ancestors(leaf)[1:]:
                leaves_of[int(node)].append(leaf)
        return {(int(altitudes[n]), tuple(lv)) for n, lv in leaves_of.items() if keep[n]}

    for seed, shape in ((0, (14, 14)), (1, (13, 15)), (2, (6, 6, 6))):
        u = quantised(seed, shape)
        graph = reference_graph(shape, 8 if len(shape) == 2 else 26)
        for threshold in (2, 5, 20):
            t1, a1 = hg.component_tree_max_tree(graph, u)
            kept = hg.attribute_area(t1) >= threshold
            kept[t1.root()] = True
            assert kept[t1.parents()[kept]].all()  # kept nodes have kept parents
            t2, a2 = hg.component_tree_max_tree(graph, hg.reconstruct_leaf_data(t1, a1, ~kept))
            everything = np.ones(t2.num_vertices(), dtype=bool)
            assert components(t1, a1, kept) == components(t2, a2, everything)


# ---------------------------------------------------------------------------------------------
# hand-made cases (level domain, area_threshold 0 so only step 4 acts unless stated)


def pyramid(shape: tuple[int, int], centre: tuple[int, int], height: int) -> np.ndarray:
    rows, cols = np.indices(shape)
    distance = np.maximum(abs(rows - centre[0]), abs(cols - centre[1]))
    return np.clip(height - distance, 0, None).astype(np.uint8)


def test_one_bump_is_flattened_away() -> None:
    bump = pyramid((9, 9), (4, 4), 4)
    # Max-tree: a chain of only children under the root, all removed.
    assert np.array_equal(filter_levels(bump, "max", 0), np.zeros_like(bump))
    # Min-tree: also a chain (the background is the single deepest basin): all at the root, 4.
    assert np.array_equal(filter_levels(bump, "min", 0), np.full_like(bump, 4))


def test_two_separate_bumps_become_plateaus_at_their_lowest_level() -> None:
    bumps = np.maximum(pyramid((9, 10), (4, 2), 3), pyramid((9, 10), (4, 7), 2))
    expected = (bumps > 0).astype(np.uint8)  # siblings kept at level 1, their insides removed
    for connectivity in (4, 8):
        assert np.array_equal(filter_levels(bumps, "max", 0, connectivity), expected)


def test_two_bumps_joined_by_a_saddle_split_at_the_saddle() -> None:
    image = np.zeros((5, 11), dtype=np.uint8)
    image[1:4, 1:4] = [[1, 2, 1], [2, 3, 2], [1, 2, 1]]
    image[1:4, 6:10] = [[2, 2, 2, 2], [2, 5, 5, 2], [2, 2, 2, 2]]
    image[2, 4:6] = 1  # the saddle: both bumps are one component up to level 1
    expected = np.where(image >= 2, 2, 0).astype(np.uint8)
    expected[2, 4:6] = 0
    # level 1: the joined component is the root's only child -> removed (saddle, feet -> 0);
    # level 2: two components, siblings, kept: plateaus at the split level 2.
    for connectivity in (4, 8):
        assert np.array_equal(filter_levels(image, "max", 0, connectivity), expected)


def test_area_removal_comes_first_and_can_orphan_a_sibling() -> None:
    image = np.zeros((7, 12), dtype=np.uint8)
    image[1:3, 1:3] = 3  # area 4
    image[1:6, 5:10] = 2  # area 25
    image[3, 7] = 6
    # threshold 0: both bumps are siblings, kept; the tall pixel (only child) flattened
    expected = image.copy()
    expected[3, 7] = 2
    assert np.array_equal(filter_levels(image, "max", 0), expected)
    # threshold 5: the small bump goes in step 3; the big one is then an only child -> root
    assert np.array_equal(filter_levels(image, "max", 5), np.zeros_like(image))


def test_ring_max_view_flat_min_view_unchanged() -> None:
    ring = np.zeros((7, 7), dtype=np.uint8)
    ring[1:6, 1:6] = 1
    ring[2:5, 2:5] = 0
    for connectivity in (4, 8):
        # Max-tree: the ring is the root's only child; Min-tree: inside and outside are siblings
        assert np.array_equal(filter_levels(ring, "max", 0, connectivity), np.zeros_like(ring))
        assert np.array_equal(filter_levels(ring, "min", 0, connectivity), ring)
    float_ring = ring.astype(np.float32)
    max_view, min_view = dual_tree_filter(float_ring, area_threshold=0)
    assert np.array_equal(max_view, np.zeros_like(float_ring))
    assert np.array_equal(min_view, float_ring)


def test_constant_images_come_back_unchanged() -> None:
    for image in (np.full((5, 6), 0.25, np.float32), np.full((3, 4, 5), 7, np.int64)):
        for view in (*dual_tree_filter(image), tree_filter(image, "min")):
            assert view.dtype == np.float32
            assert np.array_equal(view, image.astype(np.float32))
    image = np.full((4, 4), 2.0, np.float32)
    assert tree_filter(image) is not image  # a copy, never the caller's array


def test_input_dtypes_are_read_as_float32() -> None:
    image = np.random.default_rng(4).random((10, 12)) * 3 - 1
    expected = tree_filter(image.astype(np.float32), "max", 5)
    assert np.array_equal(tree_filter(image, "max", 5), expected)  # float64 input
    integers = np.random.default_rng(5).integers(0, 40, (10, 12))
    assert np.array_equal(
        tree_filter(integers, "min", 5), tree_filter(integers.astype(np.float32), "min", 5)
    )


def test_quantisation_is_the_literal_recipe() -> None:
    x = np.array([[0.0, 1 / 255, 0.5, 1.0], [0.25, 0.75, 0.999, 0.001]], dtype=np.float32)
    lo, hi = x.min(), x.max()
    u, qlo, qhi = quantise(x)
    assert np.array_equal(u, ((x - lo) / (hi - lo + 1e-8) * 255).astype(np.uint8))
    assert (qlo, qhi) == (lo, hi)
    back = dequantise(u, lo, hi)
    assert back.dtype == np.float32
    assert np.array_equal(back, u.astype(np.float32) / 255 * (hi - lo) + lo)


def authors_map_back(levels: np.ndarray, image: np.ndarray) -> np.ndarray:
    """The authors' step 5, written out: float32 levels, float32 max / min, this order."""
    x = image.astype(np.float32)
    return levels.astype(np.float32) / 255 * (x.max() - x.min()) + x.min()


def test_map_back_is_float32_not_float64_then_cast() -> None:
    """Every level of many ranges maps exactly as the authors' float32 formula; the float64
    formula cast afterwards (what the filter did before) differs in the last bit on most."""
    rng = np.random.default_rng(12)
    levels = np.arange(256, dtype=np.uint8)
    differing = 0
    for _ in range(50):
        lo, hi = np.sort(rng.normal(0, 300, 2)).astype(np.float32)
        ours = dequantise(levels, lo, hi)
        assert ours.dtype == np.float32
        assert np.array_equal(ours, levels.astype(np.float32) / 255 * (hi - lo) + lo)
        differing += not np.array_equal(ours, (levels / 255 * (hi - lo) + lo).astype(np.float32))
    assert differing > 25


# ---------------------------------------------------------------------------------------------
# properties


LEVEL_CASES = [((20, 23), 4), ((20, 23), 8), ((8, 9, 7), 6), ((8, 9, 7), 26)]


@pytest.mark.parametrize(("shape", "connectivity"), LEVEL_CASES)
def test_level_domain_order_and_idempotence(shape: tuple[int, ...], connectivity: int) -> None:
    for seed in range(3):
        u = quantised(seed, shape)
        for threshold in (0, 5, 30):
            low = filter_levels(u, "max", threshold, connectivity)
            high = filter_levels(u, "min", threshold, connectivity)
            assert (low <= u).all() and (u <= high).all()
            assert np.array_equal(filter_levels(low, "max", threshold, connectivity), low)
            assert np.array_equal(filter_levels(high, "min", threshold, connectivity), high)
            dual = 255 - filter_levels(255 - u, "max", threshold, connectivity)
            assert np.array_equal(high, dual)


@pytest.mark.parametrize(("shape", "connectivity"), LEVEL_CASES)
def test_level_domain_commutes_with_strictly_increasing_maps(
    shape: tuple[int, ...], connectivity: int
) -> None:
    levels = np.arange(256) / 255
    tables = [
        np.floor(1000 * levels**0.5).astype(np.int32),  # gamma 0.5, scaled so no levels merge
        np.floor(100000 * levels**2.0).astype(np.int32),  # gamma 2
        (np.arange(256) * 3 - 100).astype(np.int32),  # affine, negative offset
    ]
    for table in tables:
        assert (np.diff(table) > 0).all()
        for seed in range(2):
            u = quantised(seed, shape)
            for tree in ("max", "min"):
                for threshold in (0, 5, 30):
                    mapped = filter_levels(table[u], tree, threshold, connectivity)
                    expected = table[filter_levels(u, tree, threshold, connectivity)]
                    assert np.array_equal(mapped, expected)


@pytest.mark.parametrize("ndim", [2, 3])
def test_float_domain_commutes_with_flips_and_rotations(ndim: int) -> None:
    rng = np.random.default_rng(ndim)
    shape = (17, 21) if ndim == 2 else (7, 9, 8)
    image = ndi.gaussian_filter(rng.random(shape), 1.0).astype(np.float32) * 5 - 2
    transforms = [lambda a, ax=axis: np.flip(a, ax) for axis in range(ndim)]
    transforms += [lambda a, k=k: np.rot90(a, k, axes=(0, 1)) for k in (1, 2, 3)]
    if ndim == 3:
        transforms.append(lambda a: np.rot90(a, 1, axes=(1, 2)))
    for connectivity in CONNECTIVITIES[ndim]:
        views = dual_tree_filter(image, 6, connectivity)
        for transform in transforms:
            moved = dual_tree_filter(np.ascontiguousarray(transform(image)), 6, connectivity)
            for view, moved_view in zip(views, moved, strict=True):
                assert np.array_equal(moved_view, transform(view))


def rank_equivalent(a: np.ndarray, b: np.ndarray) -> bool:
    """True when ``b == phi(a)`` for a strictly increasing ``phi``: same flat zones, same order."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return (
        len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))
        and (np.diff(pairs[1]) > 0).all()
    )


def test_float_domain_bounds_and_idempotence_up_to_relabelling() -> None:
    rng = np.random.default_rng(11)
    saw_inexact = False
    for index in range(12):
        shape = (24, 24) if index % 2 else (8, 8, 8)
        image = ndi.gaussian_filter(rng.random(shape), 1.5).astype(np.float32) * 100 - 37
        step = (image.max() - image.min()) / 255
        u, lo, hi = quantise(image)
        seen = dequantise(u, lo, hi)  # what the filter sees, mapped back
        max_view, min_view = dual_tree_filter(image, 20)
        # exact: max view <= quantised input <= min view
        assert (max_view <= seen).all() and (seen <= min_view).all()
        # the quantised input is within one step below the input
        assert (seen <= image + 1e-4 * step).all() and (seen > image - step * 1.001).all()
        for tree, view in (("max", max_view), ("min", min_view)):
            again = tree_filter(view, tree, 20)
            assert rank_equivalent(view, again)
            assert np.abs(again - view).max() <= step * 1.001
            saw_inexact |= not np.array_equal(again, view)
    assert saw_inexact  # re-normalising the output's range re-quantises: not exactly equal


def test_gamma_does_not_commute_in_the_float_domain() -> None:
    """Documented counterexample: after gamma 2, two distinct levels share a uint8 bin."""
    image = np.zeros((9, 13), dtype=np.float32)
    image[1:8, 1:8] = 0.1  # region A
    image[2:4, 2:4] = 0.102  # two sub-bumps of A, siblings in the Max-tree
    image[5:7, 5:7] = 0.102
    image[3:6, 10:12] = 1.0  # a separate bright bump, sibling of A
    assert tuple(np.unique(quantise(image)[0])) == (0, 25, 26, 255)
    assert tuple(np.unique(quantise(image**2)[0])) == (0, 2, 255)  # 0.01 and 0.0104 merge
    filtered = tree_filter(image, "max", 0)
    after_gamma = tree_filter(image**2, "max", 0)
    assert filtered[2, 2] > filtered[1, 1]  # the sub-bumps survive as brighter plateaus
    assert after_gamma[2, 2] == after_gamma[1, 1]  # after gamma they are gone
    assert not rank_equivalent(filtered, after_gamma)


# ---------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tree": "median"}, "tree="),
        ({"connectivity": 6}, "connectivity="),
        ({"connectivity": 26}, "connectivity="),
        ({"connectivity": True}, "connectivity="),
        ({"area_threshold": -1}, "area_threshold="),
        ({"area_threshold": 2.5}, "area_threshold="),
        ({"area_threshold": True}, "area_threshold="),
    ],
)
def test_bad_arguments_raise(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tree_filter(np.eye(5, dtype=np.float32), **kwargs)


def test_bad_images_raise() -> None:
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        tree_filter(np.arange(5.0))
    with pytest.raises(ValueError, match=r"shape \(2, 3, 4, 5\)"):
        dual_tree_filter(np.zeros((2, 3, 4, 5)))
    with pytest.raises(ValueError, match="non-empty"):
        tree_filter(np.zeros((0, 4)))
    for bad in (np.nan, np.inf, -np.inf):
        image = np.eye(4, dtype=np.float32)
        image[1, 2] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            dual_tree_filter(image)
    with pytest.raises(ValueError, match="real numeric"):
        tree_filter(np.eye(3) + 1j)
    with pytest.raises(ValueError, match="connectivity="):
        tree_filter(np.zeros((3, 3, 3)) + np.eye(3), connectivity=8)
    with pytest.raises(ValueError, match="overflows"):
        tree_filter(np.array([[-3e38, 3e38], [0, 1]], dtype=np.float32))
    with pytest.raises(ValueError, match="images has shape"):
        dual_tree_filter_batch(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="integer"):
        filter_levels(np.eye(3))


# ---------------------------------------------------------------------------------------------
# real data (skipped when the shared data folder is absent)


@cache
def implicit_graph(shape: tuple[int, ...], connectivity: int):
    return reference_graph(shape, connectivity, implicit=True)


def assert_matches_reference(image: np.ndarray, threshold: int, connectivity: int) -> None:
    graph = implicit_graph(image.shape, connectivity)
    expected = reference_dual_tree_filter(image, threshold, connectivity, graph=graph)
    for view, ref in zip(dual_tree_filter(image, threshold, connectivity), expected, strict=True):
        assert view.dtype == ref.dtype == np.float32
        assert np.array_equal(view, ref)


def assert_view_matches_reference(
    image: np.ndarray, tree: str, threshold: int, connectivity: int
) -> None:
    graph = implicit_graph(image.shape, connectivity)
    expected = reference_tree_filter(image, tree, threshold, connectivity, graph=graph)
    view = tree_filter(image, tree, threshold, connectivity)
    assert view.dtype == expected.dtype == np.float32
    assert np.array_equal(view, expected)


@pytest.mark.skipif(not (ACDC / "val.list").is_file(), reason=f"ACDC data not found in {ACDC}")
def test_acdc_validation_slices_match_reference() -> None:
    """Every slice of every validation volume; the view and the settings cycle per slice."""
    settings = [(tree, c, t) for tree in ("max", "min") for c in (8, 4) for t in (50, 5, 0)]
    count = 0
    for volume_id in (ACDC / "val.list").read_text().split():
        with h5py.File(ACDC / "data" / f"{volume_id}.h5", "r") as file:
            volume = file["image"][()]
        for image in volume:
            tree, connectivity, threshold = settings[count % len(settings)]
            assert_view_matches_reference(image, tree, threshold, connectivity)
            count += 1
    assert count >= 20


@pytest.mark.skipif(not (ACDC / "val.list").is_file(), reason=f"ACDC data not found in {ACDC}")
def test_acdc_slices_equal_the_authors_recipe_bit_for_bit() -> None:
    """Both views of one slice per validation volume against the authors' steps written out
    here (quantise, plain higra levels, float32 map back): identical bits, and the float64 map
    back the filter used before would have failed on most of them."""
    float64_differs = 0
    volume_ids = (ACDC / "val.list").read_text().split()
    for volume_id in volume_ids:
        with h5py.File(ACDC / "data" / f"{volume_id}.h5", "r") as file:
            volume = file["image"][()]
        image = volume[len(volume) // 2]
        x = image.astype(np.float32)
        u = ((x - x.min()) / (x.max() - x.min() + 1e-8) * 255).astype(np.uint8)
        graph = implicit_graph(image.shape, 8)
        for tree, view in zip(("max", "min"), dual_tree_filter(image), strict=True):
            levels = reference_filter_levels(u, tree, 50, 8, graph=graph)
            expected = authors_map_back(levels, image)
            assert view.dtype == expected.dtype == np.float32
            assert np.array_equal(view, expected), (volume_id, tree)
            old = (levels / 255 * (x.max() - x.min()) + x.min()).astype(np.float32)
            float64_differs += not np.array_equal(old, view)
    assert float64_differs > len(volume_ids)  # more than half of the 2 * len(volume_ids) views


def la_crop(index: int, shape: tuple[int, int, int]) -> np.ndarray:
    case = (LA / "train.list").read_text().split()[index]
    with h5py.File(LA / "2018LA_Seg_Training Set" / case / "mri_norm2.h5", "r") as file:
        volume = file["image"][()]
    start = [(size - want) // 2 for size, want in zip(volume.shape, shape, strict=True)]
    window = tuple(slice(s, s + w) for s, w in zip(start, shape, strict=True))
    return np.ascontiguousarray(volume[window])


LA_MISSING = pytest.mark.skipif(
    not (LA / "train.list").is_file(), reason=f"LA data not found in {LA}"
)


@LA_MISSING
@pytest.mark.parametrize("connectivity", [6, 26])
def test_la_small_crops_match_reference(connectivity: int) -> None:
    for index, shape in ((0, (40, 36, 24)), (1, (32, 32, 32))):
        image = la_crop(index, shape)
        for threshold in (0, 5, 50):
            assert_matches_reference(image, threshold, connectivity)


@LA_MISSING
@pytest.mark.slow
def test_la_full_crop_matches_reference() -> None:
    assert_matches_reference(la_crop(2, (112, 112, 80)), 50, 26)


# ---------------------------------------------------------------------------------------------
# panel and command line


def test_panel_layout_and_png(tmp_path: Path) -> None:
    image = ndi.gaussian_filter(np.random.default_rng(0).random((48, 40)), 2).astype(np.float32)
    figure = build_filter_panel(image, area_threshold=10, title="synthetic")
    try:
        images = [ax for ax in figure.axes if ax.get_images() and ax.get_title()]
        assert [ax.get_title() for ax in images] == list(PANEL_TITLES)
        assert len(figure.axes) == 2 * len(PANEL_TITLES)  # every image has a colorbar
        shown = [ax.get_images()[0].get_array() for ax in images]
        max_view, min_view = dual_tree_filter(image, 10)
        assert np.array_equal(shown[1], max_view) and np.array_equal(shown[2], min_view)
        assert np.array_equal(shown[3], image - max_view)
        assert "synthetic" in figure.get_suptitle()
    finally:
        import matplotlib.pyplot as plt

        plt.close(figure)
    out = render_filter_panel(image, tmp_path / "sub" / "panel.png", 10, dpi=50)
    pixels = mpimg.imread(out)
    assert pixels.shape[:2] == (220, 1000)  # figsize (20, 4.4) inches at 50 dpi
    assert pixels[..., :3].std() > 0.05  # not a blank canvas


def test_panel_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2-D image"):
        build_filter_panel(np.zeros((3, 4, 5)))
    with pytest.raises(ValueError, match=r"\.png"):
        render_filter_panel(np.eye(4), tmp_path / "panel.jpg")


def test_read_slice_formats(tmp_path: Path) -> None:
    import nibabel as nib

    volume = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    with h5py.File(tmp_path / "vol.h5", "w") as file:
        file["image"] = volume
    assert np.array_equal(read_slice(tmp_path / "vol.h5"), volume[2])
    assert np.array_equal(read_slice(tmp_path / "vol.h5", 1, axis=2), volume[:, :, 1])
    (tmp_path / "la").mkdir()
    with h5py.File(tmp_path / "la" / "mri_norm2.h5", "w") as file:
        file["image"] = volume
    assert np.array_equal(read_slice(tmp_path / "la" / "mri_norm2.h5"), volume[..., 3])
    with h5py.File(tmp_path / "slice.h5", "w") as file:
        file["image"] = volume[0]
    assert np.array_equal(read_slice(tmp_path / "slice.h5"), volume[0])

    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "vol.nii.gz")
    assert np.array_equal(read_slice(tmp_path / "vol.nii.gz", 4), volume[..., 4])

    # one PNG rule with predict (segssl.data.image_io): grey stored as RGB is read as its grey
    # values, a colour image is refused
    grey = (np.arange(42).reshape(6, 7) * 6).astype(np.uint8)
    mpimg.imsave(tmp_path / "img.png", np.repeat(grey[..., None], 3, axis=2))
    gray = read_slice(tmp_path / "img.png")
    assert gray.shape == (6, 7) and gray.dtype == np.float32
    assert np.array_equal(gray, grey)
    rgb = np.zeros((6, 7, 3), dtype=np.float32)
    rgb[..., 1] = 1.0
    mpimg.imsave(tmp_path / "colour.png", rgb)
    with pytest.raises(ValueError, match=r"colour\.png: colour PNG"):
        read_slice(tmp_path / "colour.png")


def test_read_slice_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        read_slice(tmp_path / "missing.h5")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="notes.txt.*unsupported"):
        read_slice(tmp_path / "notes.txt")
    with h5py.File(tmp_path / "nokey.h5", "w") as file:
        file["label"] = np.zeros((3, 3))
    with pytest.raises(ValueError, match=r"nokey.h5.*'image'.*\['label'\]"):
        read_slice(tmp_path / "nokey.h5")
    with h5py.File(tmp_path / "vol.h5", "w") as file:
        file["image"] = np.zeros((3, 4, 5))
    with pytest.raises(ValueError, match="vol.h5.*slice_index=9"):
        read_slice(tmp_path / "vol.h5", 9)
    with h5py.File(tmp_path / "vec.h5", "w") as file:
        file["image"] = np.zeros(5)
    with pytest.raises(ValueError, match=r"vec.h5.*shape \(5,\)"):
        read_slice(tmp_path / "vec.h5")


def test_filter_command_writes_a_panel(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    volume = ndi.gaussian_filter(np.random.default_rng(1).random((5, 32, 30)), 1.5)
    with h5py.File(tmp_path / "vol.h5", "w") as file:
        file["image"] = volume.astype(np.float32)
    out = filter_cli([str(tmp_path / "vol.h5"), "--out", str(tmp_path / "p.png"), "--slice", "1"])
    assert out.is_file() and "wrote" in capsys.readouterr().out


@pytest.mark.skipif(not (ACDC / "val.list").is_file(), reason=f"ACDC data not found in {ACDC}")
def test_panel_from_acdc_slice(tmp_path: Path) -> None:
    volume_id = (ACDC / "val.list").read_text().split()[0]
    image = read_slice(ACDC / "data" / f"{volume_id}.h5")
    out = render_filter_panel(image, tmp_path / "acdc.png", 50, title=volume_id, dpi=40)
    assert mpimg.imread(out).shape[:2] == (176, 800)


def test_bench_filter_helpers_on_tiny_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_filter.py"
    spec = importlib.util.spec_from_file_location("bench_filter", script)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_filter", bench)  # dataclasses look the module up
    spec.loader.exec_module(bench)
    images = bench.synthetic_images(2, (20, 18), seed=3)
    row = bench.bench_case("tiny", "synthetic", images, 5, None, repeats=1)
    assert row.identical and row.n_images == 2 and row.ours > 0 and row.ratio > 0
    assert "tiny" in bench.format_rows([row])
    assert bench.build_parser().parse_args(["--quick"]).quick
