"""The device-resident training set (``data.on_device``): batches built by batched tensor
operations must match the per-sample loader path in geometry (labels and views aligned with the
image), in augmentation statistics, and in the batch layout methods read."""

from __future__ import annotations

import json
import logging
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segssl.data.augment import BRANCHES, RandSliceAugmentd
from segssl.data.datamodule import SemiSupervisedDataModule
from segssl.data.device_batches import (
    AugmentParams,
    BatchSliceAugment,
    DeviceBatches,
    SliceStore,
    ViewPlan,
    view_plan,
)
from segssl.data.readers import DataError
from segssl.data.transforms import slice_train_transforms
from segssl.filters.views import TreeFilter, TwoViews, dsaif_views
from tests.conftest import SMALL_SYNTHETIC, TINY

CPU = torch.device("cpu")
SIZE = 32


def coded_slice(height: int, width: int) -> dict:
    """A slice whose intensity is a function of its label (raw = 1 + label, zero only outside
    the image after a rotation), with an asymmetric layout so that any wrong rotation, flip or
    axis swap of labels against images shows; ``image_max`` and ``image_min`` stand in for
    cached views (2x and 3x the raw image, so which view a network got is read off its
    maximum)."""
    label = np.zeros((height, width), np.uint8)
    label[height // 10 : height * 4 // 10, width // 12 : width * 5 // 12] = 1
    label[height * 3 // 4 : height * 9 // 10, width // 8 : width * 11 // 12] = 2
    label[height // 4 : height * 9 // 20, width * 17 // 24 : width * 7 // 8] = 3
    raw = 1.0 + label.astype(np.float32)
    views = {"image_max": 2 * raw[None], "image_min": 3 * raw[None]}
    return {"image": raw[None], **views, "label": label, "case": f"s{height}"}


VIEW_KEYS = ("image_max", "image_min")


def test_device_geometry_is_the_per_sample_transform_batched():
    """With the same draws, each slice of a batch equals ``RandSliceAugmentd`` on that slice
    (images to float rounding, labels exactly), for every branch and for native sizes below,
    at and above the training size (the store is ragged: no padding, no pre-resizing)."""
    rng = np.random.RandomState(0)
    items = []
    for height, width in [(40, 48), (SIZE, SIZE), (20, 28), (64, 50), (33, 31)]:
        image = rng.rand(3, height, width).astype(np.float16).astype(np.float32)
        label = rng.randint(0, 4, (height, width)).astype(np.uint8)
        items.append({"image": image, "label": label, "case": f"c{height}"})
    store = SliceStore(items, CPU, with_labels=True)
    augment = BatchSliceAugment(SIZE)
    generator = torch.Generator().manual_seed(1)
    seen, worst, mismatched = set(), 0.0, 0
    for _ in range(30):
        index = torch.randint(0, len(items), (8,), generator=generator)
        params = augment.draw(8, generator, CPU)
        images, labels = augment.geometry(store, index, params)
        for b in range(8):
            one = RandSliceAugmentd(SIZE)
            one.randomize = lambda data=None: None  # the batch's draws instead
            one.branch = BRANCHES[int(params.branch[b])]
            one.k, one.angle = int(params.k[b]), float(params.angle[b])
            one.flips = [bool(f) for f in params.flips[b]]
            item = items[int(index[b])]
            out = one({"image": item["image"], "label": torch.as_tensor(item["label"])[None]})
            worst = max(worst, float((out["image"] - images[b]).abs().max()))
            mismatched += int((out["label"] != labels[b]).sum())
            seen.add((one.branch, tuple(item["image"].shape)))
    assert {branch for branch, _ in seen} == set(BRANCHES)
    assert worst < 1e-4
    assert mismatched == 0


def test_labels_and_views_stay_aligned_with_the_image():
    """After device augmentation the label is still the function of intensity it was
    (raw = 1 + label, zero outside the slice), and each view is its cached view of the very
    same pixels (2x or 3x the image, one of each per slice since p=1)."""
    items = [coded_slice(h, w) for h, w in [(40, 48), (SIZE, SIZE), (64, 50), (24, 30)]]
    store = SliceStore(items, CPU, with_labels=True, view_keys=VIEW_KEYS)
    plan = ViewPlan(view_a="image_max", view_b="image_min", p=1.0, gamma_p=0.0,
                    gamma_range=(0.5, 1.5))  # fmt: skip
    batches = DeviceBatches({"labeled": (store, 4)}, BatchSliceAugment(SIZE, plan), length=40)
    torch.manual_seed(0)
    checked = agree = 0
    for batch in batches:
        stream = batch["labeled"]
        image, label = stream["image"], stream["label"]
        assert image.shape == label.shape == (4, 1, SIZE, SIZE) and label.dtype == torch.long
        # inside regions (3x3 neighbourhood of one intensity), away from interpolated edges
        spread = F.max_pool2d(image, 3, 1, 1) + F.max_pool2d(-image, 3, 1, 1)
        plain = spread.abs() < 1e-3
        expected = torch.where(image.round() > 0, image.round() - 1, 0).long()
        checked += int(plain.sum())
        agree += int((label == expected)[plain].sum())
        ratios = []
        for key in ("image_1", "image_2"):
            ratio = stream[key].amax((1, 2, 3)) / image.amax((1, 2, 3))
            assert torch.allclose(stream[key], ratio.view(-1, 1, 1, 1) * image, atol=1e-4)
            ratios.append(ratio)
        assert torch.equal(
            torch.sort(torch.stack(ratios), 0).values.round()[0], torch.full((4,), 2.0)
        )
    assert checked > 0.5 * 40 * 4 * SIZE * SIZE and agree == checked


def test_the_views_are_read_by_key_whatever_the_store_packs_first():
    """The plan names the keys it reads: the store's packing order changes nothing, and a key
    the items do not carry is refused by name."""
    items = [coded_slice(h, w) for h, w in [(40, 48), (SIZE, SIZE), (24, 30)]]
    plan = ViewPlan("image_max", "image_min", p=0.7, gamma_p=0.5, gamma_range=(0.5, 1.5))
    runs = []
    for keys in (VIEW_KEYS, VIEW_KEYS[::-1]):
        store = SliceStore(items, CPU, with_labels=True, view_keys=keys)
        assert store.keys == ["image", *keys]
        batches = DeviceBatches({"labeled": (store, 3)}, BatchSliceAugment(SIZE, plan), length=6)
        torch.manual_seed(0)
        runs.append(list(batches))
    for first, second in zip(*runs, strict=True):
        for key in ("image", "image_1", "image_2", "label"):
            assert torch.equal(first["labeled"][key], second["labeled"][key]), key
    assert set(runs[0][0]["labeled"]) == {"image", "image_1", "image_2", "label", "case"}
    store = SliceStore(items, CPU, with_labels=True, view_keys=("image_max",))
    with pytest.raises(DataError, match="'image_min'"):
        next(iter(DeviceBatches({"labeled": (store, 3)}, BatchSliceAugment(SIZE, plan), 1)))


def per_sample_stats(image, image_1, image_2, label) -> np.ndarray:
    """Per slice: quadrant of the class-1 centroid (rot90/flip), zero (outside) fraction and
    whether any (rotation), the view channels (2x/3x/1x of the image), whether each view got a
    gamma and its value, the mean intensity and the class fractions of 1 and 2. (B, 12)."""
    n = image.shape[0]
    ys, xs = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    ones = (label[:, 0] == 1).float()
    mass = ones.sum((1, 2)).clamp_min(1)
    cy, cx = (ones * ys).sum((1, 2)) / mass, (ones * xs).sum((1, 2)) / mass
    quadrant = 2 * (cy >= SIZE / 2).float() + (cx >= SIZE / 2).float()
    zeros = (image[:, 0] < 0.5).float().mean((1, 2))
    columns = [quadrant, zeros, (zeros > 0).float()]
    for view in (image_1, image_2):
        channel = (view.amax((1, 2, 3)) / image.amax((1, 2, 3))).round()
        low, high = view.amin((1, 2, 3), keepdim=True), view.amax((1, 2, 3), keepdim=True)
        normed = (view - low) / (high - low)
        plain = (image - low / channel.view(-1, 1, 1, 1)) / (
            (high - low) / channel.view(-1, 1, 1, 1)
        )
        gamma = ((normed - plain).abs().amax((1, 2, 3)) > 1e-3).float()
        # the gamma itself, read off the pixels strictly inside the range (1 where none applied)
        inside = (plain > 0.05) & (plain < 0.95) & (normed > 1e-6)
        ratio = torch.where(inside, normed.clamp_min(1e-6).log() / plain.clamp(1e-6, 0.99).log(), 0)
        value = ratio.sum((1, 2, 3)) / inside.sum((1, 2, 3)).clamp_min(1)
        columns += [channel, gamma, torch.where(gamma > 0, value, 1.0)]
    columns.append(image.mean((1, 2, 3)))
    columns += [(label == c).float().mean((1, 2, 3)) for c in (1, 2)]
    return torch.stack([c.reshape(n) for c in columns], 1).numpy()


def test_augmentation_statistics_match_the_loader_path():
    """Over 1500 slices each, the device path and the per-sample loader path (same slice, same
    views settings) agree on the rot90/flip distribution (where the class-1 block lands), the
    rotations (zero corners), which view each network gets, how often gamma applies and its
    effect, intensity and label fractions, within a few binomial standard deviations."""
    item = coded_slice(40, 48)
    views = TwoViews(TreeFilter("max"), TreeFilter("min"), p=0.5, gamma_p=0.5, cache=True)
    transform = slice_train_transforms(SIZE, views=views, view_keys=views.cache_keys)
    transform.set_random_state(seed=0)
    rows = []
    for _ in range(1500):
        out = transform(dict(item))
        parts = [out[k][None].float() for k in ("image", "image_1", "image_2")]
        rows.append(per_sample_stats(*parts, out["label"][None]))
    loader = np.concatenate(rows)

    plan, why = view_plan(views)
    assert why is None and plan == ViewPlan("image_max", "image_min", 0.5, 0.5, (0.5, 1.5))
    store = SliceStore([item] * 10, CPU, with_labels=True, view_keys=views.cache_keys)
    batches = DeviceBatches({"labeled": (store, 10)}, BatchSliceAugment(SIZE, plan), length=150)
    torch.manual_seed(0)
    keys = ("image", "image_1", "image_2", "label")
    device = np.concatenate([per_sample_stats(*(b["labeled"][k] for k in keys)) for b in batches])
    assert device.shape == loader.shape == (1500, 12)

    def frequencies(column: np.ndarray, values) -> np.ndarray:
        return np.array([(column == v).mean() for v in values])

    tolerance = 4 * np.sqrt(0.25 / 1500) * np.sqrt(2)  # 4 sd of a difference of two freqs
    quadrants = [frequencies(s[:, 0], range(4)) for s in (loader, device)]
    assert np.allclose(quadrants[0], [0.625, 0.125, 0.125, 0.125], atol=tolerance)
    assert np.allclose(quadrants[0], quadrants[1], atol=tolerance)
    for col, values in ((2, (0, 1)), (3, (1, 2, 3)), (4, (0, 1)), (6, (1, 2, 3)), (7, (0, 1))):
        # rotated; each network's view channel and whether it got a gamma
        assert np.allclose(
            frequencies(loader[:, col], values), frequencies(device[:, col], values), atol=tolerance
        ), col
    for col in (3, 6):  # each network: the raw image half the time, each tree a quarter
        for s in (loader, device):
            assert np.allclose(frequencies(s[:, col], (1, 2, 3)), [0.5, 0.25, 0.25], atol=tolerance)
    for col in (1, 5, 8, 9, 10, 11):  # zero fraction, gammas, intensity, labels
        a, b = loader[:, col], device[:, col]
        spread = 4 * np.sqrt(a.var() / len(a) + b.var() / len(b)) + 1e-6
        assert abs(a.mean() - b.mean()) < spread, (col, a.mean(), b.mean())


@pytest.fixture
def synthetic_root(tmp_path: Path) -> Path:
    return tmp_path / "synthetic"


def make_module(root: Path, views, on_device) -> SemiSupervisedDataModule:
    module = SemiSupervisedDataModule(
        root=root, num_classes=4, class_names=["RV", "Myo", "LV"], labeled=1, image_size=SIZE,
        batch_size=4, labeled_batch_size=2, name="synthetic", synthetic=SMALL_SYNTHETIC,
        views=views, num_workers=1, pin_memory=False, on_device=on_device,
    )  # fmt: skip
    module.prepare_data()
    module.setup("fit")
    return module


def test_device_batches_have_the_loader_batches_layout(synthetic_root: Path, tmp_path: Path):
    """Same streams, keys, shapes, dtypes and steps per epoch as the loaders, real cached DSAIF
    views included: methods read either without knowing which."""
    views = dsaif_views(cache=True, cache_dir=str(tmp_path / "views"))
    device = make_module(synthetic_root, views, on_device=True).train_dataloader()
    loader = make_module(synthetic_root, views, on_device=False).train_dataloader()
    assert isinstance(device, DeviceBatches) and not isinstance(loader, DeviceBatches)
    from_device = next(iter(device))
    epoch = iter(loader)
    assert len(device) == len(loader) > 0
    from_loader = next(epoch)[0]
    assert set(from_device) == set(from_loader) == {"labeled", "unlabeled"}
    for name, stream in from_loader.items():
        assert set(from_device[name]) == set(stream)
        for key, value in stream.items():
            other = from_device[name][key]
            if key == "case":
                assert len(other) == len(value) and all(isinstance(c, str) for c in other)
                continue
            assert (other.shape, other.dtype) == (value.shape, value.dtype), (name, key)


def test_on_device_true_refuses_views_made_on_the_host(synthetic_root: Path, tmp_path: Path):
    """Filtering on the fly stays exact on the host: ``true`` says what to change, ``auto``
    keeps the loaders."""
    views = dsaif_views(cache=False, cache_dir=str(tmp_path / "views"))
    with pytest.raises(DataError, match=r"filter.cache=true"):
        make_module(synthetic_root, views, on_device=True).train_dataloader()
    loader = make_module(synthetic_root, views, on_device="auto").train_dataloader()
    assert not isinstance(loader, DeviceBatches)
    with pytest.raises(DataError, match="data.on_device='yes'"):
        make_module(synthetic_root, views, on_device="yes")


def test_auto_keeps_the_cpu_on_the_loaders(synthetic_root: Path, tmp_path: Path):
    """Today's CPU behaviour is unchanged by default: ``auto`` on the CPU uses the loaders."""
    views = dsaif_views(cache=True, cache_dir=str(tmp_path / "views"))
    module = make_module(synthetic_root, views, on_device="auto")
    assert module.device_path(CPU) == (False, "data.on_device=auto on a cpu device")
    assert not isinstance(module.train_dataloader(), DeviceBatches)


def test_tiny_training_run_on_the_device_path(run_task, caplog):
    """``data.on_device=true`` trains, validates and tests end to end on the CPU."""
    with caplog.at_level(logging.INFO, logger="segssl.data.datamodule"):
        output_dir, _, cfg = run_task([*TINY, "data.on_device=true", "filter.cache=true"])
    assert cfg.data.on_device is True
    assert "Training batches built on cpu (data.on_device=true)" in caplog.text
    results = json.loads((output_dir / "results.json").read_text())
    assert results["models"]["ensemble"]["mean"]["dice"] >= 0.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_batches_on_the_gpu_match_the_cpu_and_read_nothing_back():
    """On CUDA: the same draws give the CPU's images and labels, and building batches never
    waits for the device (any host synchronisation raises)."""
    cuda = torch.device("cuda")
    items = [coded_slice(h, w) for h, w in [(40, 48), (SIZE, SIZE), (64, 50), (24, 30)]]
    plan = ViewPlan(view_a="image_max", view_b="image_min", p=0.5, gamma_p=0.5,
                    gamma_range=(0.5, 1.5))  # fmt: skip
    augment = BatchSliceAugment(SIZE, plan)
    params = augment.draw(8, torch.Generator().manual_seed(0), CPU)
    on_gpu = AugmentParams(*(getattr(params, f.name).to(cuda) for f in fields(params)))
    index = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    cpu_store = SliceStore(items, CPU, True, view_keys=VIEW_KEYS)
    cpu_image, cpu_label = augment.geometry(cpu_store, index, params)
    gpu_store = SliceStore(items, cuda, with_labels=True, view_keys=VIEW_KEYS)
    gpu_image, gpu_label = augment.geometry(gpu_store, index.to(cuda), on_gpu)
    assert torch.allclose(cpu_image, gpu_image.cpu(), atol=1e-4)
    assert torch.equal(cpu_label, gpu_label.cpu())
    batches = iter(DeviceBatches({"labeled": (gpu_store, 4)}, augment, length=4))
    next(batches)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for batch in batches:
            assert batch["labeled"]["image_1"].device.type == "cuda"
    finally:
        torch.cuda.set_sync_debug_mode("default")
