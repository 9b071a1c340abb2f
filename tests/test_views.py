"""Two-view makers, the fast slice augmentation and the pre-computed view cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Resized

from segssl.data.augment import RandSliceAugmentd
from segssl.data.transforms import slice_train_transforms
from segssl.filters import tree_filter
from segssl.filters.views import TwoViews, dsaif_views


def phantom(shape=(40, 36), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = np.zeros(shape, np.float32)
    for _ in range(5):
        cy, cx, r = rng.uniform(5, shape[0] - 5), rng.uniform(5, shape[1] - 5), rng.uniform(2, 7)
        image += rng.uniform(0.2, 1) * ((yy - cy) ** 2 + (xx - cx) ** 2 < r**2)
    return image + 0.05 * rng.random(shape, dtype=np.float32)


def test_dsaif_views_give_one_max_and_one_min_view():
    image = phantom()
    views = dsaif_views(p=1.0, gamma_p=0.0, area_threshold=5)
    expected = {tree_filter(image, t, 5).tobytes() for t in ("max", "min")}
    seen_swaps = set()
    for seed in range(8):
        views.set_random_state(seed)
        out = views({"image": image[None]})
        got = {out["image_1"][0].numpy().tobytes(), out["image_2"][0].numpy().tobytes()}
        assert got == expected
        seen_swaps.add(out["image_1"][0].numpy().tobytes())
    assert len(seen_swaps) == 2  # which network gets which view is random


def test_p_zero_and_identity_views_leave_the_image():
    image = phantom()
    out = TwoViews(p=0.0)({"image": image[None]})
    assert torch.equal(out["image_1"], out["image_2"])
    assert np.array_equal(out["image_1"][0].numpy(), image)


def test_gamma_is_applied_per_view_within_the_range():
    image = phantom()
    views = TwoViews(p=0.0, gamma_p=1.0, gamma_range=(0.5, 1.5))
    views.set_random_state(1)
    out = views({"image": image[None]})
    assert not torch.equal(out["image_1"], out["image_2"])
    for view in (out["image_1"], out["image_2"]):  # same range, same order of pixel values
        assert view.min() == pytest.approx(image.min()) and view.max() == pytest.approx(image.max())
        order = np.argsort(image.ravel(), kind="stable")
        assert np.all(np.diff(view.numpy().ravel()[order]) >= -1e-6)


def test_cached_views_equal_on_the_fly_views_without_resampling():
    """With nothing that fails to commute (no resize, rot90/flip only), the cache is exact."""
    image = phantom((32, 32))
    fly = dsaif_views(p=1.0, gamma_p=0.0, area_threshold=5)
    cached = dsaif_views(p=1.0, gamma_p=0.0, area_threshold=5, cache=True)
    sample = {"image": torch.as_tensor(image[None])}
    sample.update({k: torch.as_tensor(v[None]) for k, v in cached.precompute(image).items()})
    assert set(sample) == {"image", *cached.cache_keys} == {"image", "image_max", "image_min"}
    # always rot90 + flips
    augment = RandSliceAugmentd(32, weights=(1.0, 0.0, 0.0))
    augment_cached = RandSliceAugmentd(32, weights=(1.0, 0.0, 0.0), view_keys=cached.cache_keys)
    for seed in range(6):
        for transform in (augment, augment_cached, fly, cached):
            transform.set_random_state(seed)
        a = fly(augment({"image": torch.as_tensor(image[None])}))
        b = cached(augment_cached(dict(sample)))
        assert torch.equal(a["image_1"], b["image_1"]) and torch.equal(a["image_2"], b["image_2"])
        assert b["image"].shape == (1, 32, 32)
        assert set(b) == set(a) == {"image", "image_1", "image_2"}  # the view keys dropped


def test_slice_augment_matches_monai_resize_and_keeps_labels_aligned():
    image = phantom((50, 44))
    label = (image > 0.5).astype(np.uint8)
    augment = RandSliceAugmentd(32, augment=False)
    out = augment({"image": torch.as_tensor(image[None]), "label": torch.as_tensor(label[None])})
    reference = Resized("image", spatial_size=(32, 32), mode="bilinear")({"image": image[None]})
    assert torch.allclose(out["image"], torch.as_tensor(reference["image"]), atol=1e-6)
    assert out["label"].dtype == torch.long and set(out["label"].unique().tolist()) <= {0, 1}
    # rotations: label and image move together (the label is the thresholded image, rotated)
    rotate = RandSliceAugmentd(32, weights=(0.0, 1.0, 0.0), rotate_degrees=20)
    rotate.set_random_state(3)
    square = np.kron(label[:32, :32], np.ones((1, 1), np.uint8))
    pair = rotate(
        {
            "image": torch.as_tensor(square[None].astype(np.float32)),
            "label": torch.as_tensor(square[None]),
        }
    )
    assert abs(rotate.angle) > 0
    assert torch.equal((pair["image"] > 0.5).long(), pair["label"])


def test_slice_augment_rotation_and_rot90_match_monai():
    from monai.transforms import Rotate

    image = phantom((32, 32))[None]
    rotate = RandSliceAugmentd(32, weights=(0.0, 1.0, 0.0))
    rotate.set_random_state(5)
    ours = rotate({"image": image})["image"]
    reference = Rotate(angle=rotate.angle, mode="bilinear", padding_mode="zeros")(image)
    assert torch.allclose(ours, torch.as_tensor(reference), atol=1e-5)
    rot_flip = RandSliceAugmentd(32, weights=(1.0, 0.0, 0.0))
    rot_flip.set_random_state(2)
    ours = rot_flip({"image": image})["image"].numpy()
    expected = np.rot90(image, rot_flip.k, axes=(-2, -1))
    for axis, flip in zip((-2, -1), rot_flip.flips, strict=True):
        expected = np.flip(expected, axis) if flip else expected
    assert np.array_equal(ours, expected)


def test_slice_train_transforms_output_contract():
    transform = slice_train_transforms(24, views=dsaif_views(area_threshold=3))
    image, label = phantom((30, 20)), np.zeros((30, 20), np.uint8)
    labeled = transform({"image": image[None], "label": label, "case": "c"})
    assert labeled["label"].shape == (1, 24, 24) and labeled["label"].dtype == torch.long
    assert labeled["image_1"].shape == labeled["image_2"].shape == (1, 24, 24)
    unlabeled = transform({"image": image[None], "case": "u"})
    assert "label" not in unlabeled and unlabeled["image_1"].dtype == torch.float32


def test_view_cache_is_built_once_and_keyed_by_filter_parameters(tmp_path):
    from segssl.data.datamodule import SemiSupervisedDataModule
    from segssl.data.synthetic import ensure_synthetic_dataset

    root = ensure_synthetic_dataset(
        tmp_path / "data",
        num_train_patients=3,
        num_val_patients=1,
        num_test_patients=1,
        image_size=32,
        slices_per_volume=2,
    )
    cache_dir = tmp_path / "cache"

    def datamodule(area_threshold: int) -> SemiSupervisedDataModule:
        views = dsaif_views(area_threshold=area_threshold, cache=True, cache_dir=str(cache_dir))
        dm = SemiSupervisedDataModule(
            root,
            4,
            ["RV", "Myo", "LV"],
            labeled=1,
            image_size=32,
            batch_size=4,
            labeled_batch_size=2,
            views=views,
            num_workers=0,
        )
        dm.setup("fit")
        return dm

    dm = datamodule(5)
    files = list(cache_dir.glob("*.h5"))
    assert len(files) == 1
    item = dm._train["labeled"][0]
    assert item["image"].shape == item["image_max"].shape == item["image_min"].shape == (1, 32, 32)
    assert np.array_equal(item["image_max"][0], tree_filter(item["image"][0], "max", 5))
    assert np.array_equal(item["image_min"][0], tree_filter(item["image"][0], "min", 5))
    mtime = files[0].stat().st_mtime_ns
    datamodule(5)
    assert files[0].stat().st_mtime_ns == mtime  # reused, not rebuilt
    datamodule(7)
    assert len(list(cache_dir.glob("*.h5"))) == 2  # other parameters, other cache
    batch = next(iter(dm.train_dataloader()))[0]
    assert batch["labeled"]["image"].shape == (2, 1, 32, 32)
    assert batch["unlabeled"]["image_2"].shape == (2, 1, 32, 32)
    assert set(batch["labeled"]) == {"image", "image_1", "image_2", "label", "case"}


@pytest.mark.parametrize("dims", [2, 3])
def test_a_cached_sample_carries_its_views_by_name_moved_with_image_and_label(dims):
    """The transforms list the view keys: one random spatial draw moves the image, the label and
    every view alike. Here each view is a fixed function of the image (2x, -x: exact through
    any interpolation) and the label the thresholded image, so any view or label moved
    differently from the image shows."""
    from segssl.data.transforms import patch_train_transforms

    keys = ["image_max", "image_min"]
    shape = (24, 24) if dims == 2 else (12, 12, 8)
    image = np.random.default_rng(dims).random(shape).astype(np.float32)
    label = (image > 0.5).astype(np.uint8)
    sample = {"image": image[None], "image_max": 2 * image[None], "image_min": -image[None]}
    sample.update(label=label, case="c")
    if dims == 2:
        transform = slice_train_transforms(24, view_keys=keys)
    else:
        transform = patch_train_transforms([8, 8, 6], view_keys=keys)
    steps = transform.transform.transforms
    moved = set()
    for seed in range(8):
        transform.set_random_state(seed)
        out = transform(dict(sample))
        assert set(out) == {"image", *keys, "label", "case"}
        assert out["image"].shape == out["image_max"].shape == out["label"].shape
        assert out["image_max"].dtype == torch.float32
        assert torch.equal(out["image_max"], 2 * out["image"])
        assert torch.equal(out["image_min"], -out["image"])
        rotated = dims == 2 and steps[1].branch == "rotate"  # labels: nearest, images: bilinear
        assert rotated or torch.equal(out["label"], (out["image"] > 0.5).long())
        moved.add(out["image"].numpy().tobytes())
    assert len(moved) > 2  # the draws differ between seeds


# ---------------------------------------------------------------------------------------------
# filter.area_threshold follows the training input (issue 24)


def synthetic_slice(size: int, seed: int = 0) -> np.ndarray:
    """A middle slice of a synthetic cardiac phantom rendered at ``size`` px."""
    from segssl.data.synthetic.rendering import make_phantom_volume

    image, _ = make_phantom_volume(np.random.default_rng(seed), size, 3, 1)
    return image[1]


@pytest.mark.parametrize("size", [32, 64, 256])
def test_default_views_keep_structure_at_every_image_size(size, caplog):
    """The default (auto) threshold keeps tens of grey levels in both views; the paper's 50
    pixels taken literally at 32 px left one view black and the other binary."""
    from segssl.filters.views import COLLAPSED_LEVELS

    views = dsaif_views(p=1.0, gamma_p=0.0, image_size=size)  # conf/filter/dsaif.yaml's default
    assert views.view_a.area_threshold == {32: 1, 64: 3, 256: 50}[size]
    for seed in range(3):
        image = synthetic_slice(size, seed)
        out = views({"image": image[None]})
        for key in ("image_1", "image_2"):
            view = out[key][0].numpy()
            assert view.std() > 0 and np.unique(view).size >= COLLAPSED_LEVELS, (size, seed, key)
    assert "collapsed" not in caplog.text


def test_default_views_keep_structure_on_real_acdc_slices():
    from scipy.ndimage import zoom

    from segssl.filters.views import COLLAPSED_LEVELS
    from tests.conftest import shared_data

    h5py = pytest.importorskip("h5py")
    slices = sorted((shared_data("ACDC") / "data" / "slices").glob("*.h5"))[::400][:3]
    assert slices
    for path in slices:
        with h5py.File(path) as handle:
            raw = handle["image"][:]
        for size in (32, 64, 256):
            image = zoom(raw, (size / raw.shape[0], size / raw.shape[1]), order=1)
            views = dsaif_views(image_size=size)
            for tree in (views.view_a, views.view_b):
                view = tree(image.astype(np.float32), np.random.RandomState(0))
                assert np.unique(view).size >= COLLAPSED_LEVELS, (path.name, size, tree.tree)


def test_auto_threshold_scales_with_the_configured_input(tmp_path):
    """Through the composed train config: data.image_size in 2-D, data.patch_size's voxels in
    3-D, and a number given as filter.area_threshold= kept as it is (DESIGN.md contract)."""
    from hydra.utils import instantiate

    from tests.conftest import compose_config

    def threshold(*overrides: str) -> int:
        cfg = compose_config("train", list(overrides), tmp_path / "run")
        return instantiate(cfg.filter).view_a.area_threshold

    assert threshold("data.image_size=256") == 50  # the paper's value at the paper's size
    assert threshold("data.image_size=128") == 12
    assert threshold("data.image_size=32") == 1
    assert threshold("data=la") == round(50 * 112 * 112 * 80 / 256**2)  # the same share
    assert threshold("data.image_size=32", "filter.area_threshold=50") == 50
    assert threshold("data.image_size=32", "filter=max_only") == 1
    with pytest.raises(Exception, match=r"filter.area_threshold='big'.*'auto'"):
        threshold("filter.area_threshold=big")  # Hydra wraps the ValueError


def test_a_collapsed_view_is_warned_once_naming_the_setting(caplog):
    views = dsaif_views(p=1.0, gamma_p=0.0, area_threshold=50)  # the paper's number at 32 px
    for seed in range(4):
        views({"image": synthetic_slice(32, seed)[None]})
    warnings = [r for r in caplog.records if "collapsed" in r.getMessage()]
    assert len(warnings) == 2  # once for each tree, not once per sample
    assert "filter.area_threshold=50" in warnings[0].getMessage()
    assert "auto (1 here)" in warnings[0].getMessage()


def test_cache_key_parameters_ignore_the_collapse_check():
    """The view cache is keyed by the filter's parameters: the same as before the check was
    added (existing caches stay valid), and unchanged after views were made."""
    views = dsaif_views(area_threshold=5)
    before = views.cache_params()
    assert before["view_a"] == {
        "tree": "max",
        "area_threshold": 5,
        "connectivity": None,
        "cache_key": "image_max",
    }
    views.precompute(phantom())
    assert views.cache_params() == before
