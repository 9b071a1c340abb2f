"""DSAIF-SEMI's 3-D detail (``filter.rotate_view_2``): network 2's image is rotated by k x 90
degrees in (H, W) before its tree filter and its logits are rotated back before any loss, so the
labels, network 1's pseudo-labels and the metrics see network 2's output where the voxels are.
Checked on tiny volumes through the real transforms, view maker and CPS/DSAIF losses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from torch import nn
from torch.utils.data import default_collate

from segssl.data.device_batches import view_plan
from segssl.data.transforms import patch_train_transforms
from segssl.filters import tree_filter
from segssl.filters.views import TwoViews, dsaif_views, identity, rotate_back
from tests.conftest import TINY, compose_config

SHAPE = (8, 8, 4)  # (H, W, D): square in-plane, as LA's 112x112x80 patches
AREA = 3


def volume(seed: int) -> np.ndarray:
    """A (1, H, W, D) volume with bright and dark blobs the trees keep or remove, and no voxel
    at exactly 0.5 (the identity-like network's decision threshold)."""
    rng = np.random.RandomState(seed)
    image = rng.choice([0.1, 0.3, 0.7, 0.9], size=SHAPE).astype(np.float32)
    image += rng.uniform(-0.05, 0.05, size=SHAPE).astype(np.float32)
    return image[None]


class Probe(nn.Module):
    """An identity-like "network": logits a voxel-wise function of the input, so a voxel's
    logits say which input voxel they came from (foreground where the intensity is over 0.5)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([0.5 - x, x - 0.5 + 0.1 * x**2], dim=1)


def logits_of(image: np.ndarray) -> torch.Tensor:
    return Probe()(torch.as_tensor(np.ascontiguousarray(image), dtype=torch.float32)[None, None])[0]


def samples(views: TwoViews, n: int, labeled: bool, seed: int = 0) -> list[dict]:
    transform = patch_train_transforms(SHAPE, views=views, augment=False)
    transform.set_random_state(seed)
    items = []
    for i in range(n):
        raw = volume(100 * seed + i)
        item = {"image": raw}
        if labeled:
            item["label"] = (raw[0] > 0.5).astype(np.int64)
        items.append(transform(item))
    return items


def cps_method(tmp_path: Path):
    cfg = compose_config("train", [*TINY, "method=dsaif"], tmp_path / "run")
    method = instantiate(cfg.method)
    method.networks = nn.ModuleDict({"net1": Probe(), "net2": Probe()})
    recorded: list[tuple[torch.Tensor, torch.Tensor]] = []

    class RecordingLoss(nn.Module):
        """Stands in for the supervised loss: keeps what reaches it."""

        def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
            recorded.append((logits.detach().clone(), label.clone()))
            return logits.float().mean() * 0.0

    method.supervised_loss = RecordingLoss()
    return method, recorded


# -- the rotation itself --------------------------------------------------------------------
def test_rotate_back_undoes_each_samples_quarter_turns_and_passes_gradients():
    logits = torch.randn(4, 2, 6, 6, 3, requires_grad=True)
    k = torch.tensor([0, 1, 2, 3])
    turned = torch.stack([torch.rot90(logits[i], int(k[i]), dims=(1, 2)) for i in range(4)])
    back = rotate_back(turned, k)
    assert torch.equal(back, logits)
    back.sum().backward()
    assert torch.equal(logits.grad, torch.ones_like(logits))
    with pytest.raises(ValueError, match="rot_k_2 holds 3 rotations for 4 samples"):
        rotate_back(turned, k[:3])


def test_network_2s_view_is_rotated_before_its_filter_and_k_is_uniform_over_0_to_3():
    views = dsaif_views(p=1.0, area_threshold=AREA, gamma_p=0.0, rotate_view_2=True)
    items = samples(views, 200, labeled=False)
    counts = np.bincount([item["rot_k_2"] for item in items], minlength=4)
    assert counts.sum() == 200 and counts.min() >= 30, counts  # ~50 each
    for item in items[:12]:
        raw, k = item["image"][0].numpy(), item["rot_k_2"]
        view_1, view_2 = item["image_1"][0].numpy(), item["image_2"][0].numpy()
        rotated_raw = np.rot90(raw, k, axes=(0, 1))
        # network 2 filters the rotated image; network 1's view is the other tree, unrotated
        trees = {t: tree_filter(raw, t, AREA) for t in ("max", "min")}
        tree_2 = next(t for t in trees if np.array_equal(view_2, tree_filter(rotated_raw, t, AREA)))
        tree_1 = "min" if tree_2 == "max" else "max"
        assert np.array_equal(view_1, trees[tree_1])
        # the tree filter commutes with rot90: rotated back, it is the unrotated view
        assert np.array_equal(np.rot90(view_2, -k, axes=(0, 1)), trees[tree_2])


def test_k_is_zero_when_the_pair_is_not_filtered_and_no_key_without_the_option():
    items = samples(dsaif_views(p=0.5, area_threshold=AREA, gamma_p=0.0, rotate_view_2=True),
                    80, labeled=False)  # fmt: skip
    plain = [i for i in items if torch.equal(i["image_1"], i["image"])]
    assert plain and len(plain) < len(items)
    assert all(i["rot_k_2"] == 0 and torch.equal(i["image_2"], i["image"]) for i in plain)
    assert {i["rot_k_2"] for i in items} == {0, 1, 2, 3}
    off = samples(dsaif_views(p=1.0, area_threshold=AREA, gamma_p=0.0), 4, labeled=False)
    assert all("rot_k_2" not in i for i in off)


def test_cached_and_on_the_fly_views_agree_with_the_rotation():
    """filter.cache=true rotates the pre-computed view, on the fly the image is rotated before
    the filter: the same voxels, and the same k from the same random stream."""
    fly = dsaif_views(p=0.7, area_threshold=AREA, gamma_p=0.0, rotate_view_2=True)
    cached = dsaif_views(p=0.7, area_threshold=AREA, gamma_p=0.0, rotate_view_2=True, cache=True)
    fly.set_random_state(5)
    cached.set_random_state(5)
    ks = set()
    for i in range(24):
        raw = volume(i)
        pre = {key: torch.as_tensor(view[None]) for key, view in cached.precompute(raw[0]).items()}
        a, b = fly({"image": torch.as_tensor(raw)}), cached({"image": torch.as_tensor(raw), **pre})
        assert a["rot_k_2"] == b["rot_k_2"]
        ks.add(a["rot_k_2"])
        for key in ("image", "image_1", "image_2"):
            assert torch.equal(a[key], b[key]), (i, key)
    assert ks == {0, 1, 2, 3}


# -- the logits that reach the loss ---------------------------------------------------------
def test_network_2s_logits_reach_the_losses_aligned_with_labels_and_network_1(tmp_path):
    """Identity views (rotation only) and identity-like networks: with the rotation undone,
    network 2's logits at the supervised loss are the unrotated computation, their argmax the
    label everywhere, and the two networks agree on every unlabeled voxel (the CPS targets)."""
    views = TwoViews(identity, identity, p=1.0, gamma_p=0.0, rotate_view_2=True)
    labeled = default_collate(samples(views, 4, labeled=True, seed=1))
    unlabeled = default_collate(samples(views, 4, labeled=False, seed=2))
    assert set(labeled["rot_k_2"].tolist()) & {1, 3}  # quarter turns a misalignment would show
    assert not torch.equal(labeled["image_2"], labeled["image_1"])
    method, recorded = cps_method(tmp_path)
    losses = method.training_losses({"labeled": labeled, "unlabeled": unlabeled})
    (logits_1, label), (logits_2, label_2) = recorded
    assert torch.equal(label_2, labeled["label"])
    expected = torch.stack([logits_of(raw[0].numpy()) for raw in labeled["image"]])
    assert torch.allclose(logits_2, expected) and torch.allclose(logits_1, expected)
    assert torch.equal(logits_2.argmax(1), label[:, 0])
    assert float(method.train_dice["net2"].compute()) == 1.0
    assert float(method.train_agreement.compute()) == 1.0
    assert float(losses["cps"]) > 0  # the pseudo-label loss ran on the aligned logits
    # the same batch without the rotation undone would not be aligned
    unrotated = method.run_network("net2", labeled["image_2"])
    assert not torch.equal(unrotated.argmax(1), label[:, 0])


def test_with_tree_filters_the_logits_equal_the_unrotated_computation(tmp_path):
    views = dsaif_views(p=1.0, area_threshold=AREA, gamma_p=0.0, rotate_view_2=True)
    labeled = default_collate(samples(views, 4, labeled=True, seed=3))
    unlabeled = default_collate(samples(views, 2, labeled=False, seed=4))
    assert set(labeled["rot_k_2"].tolist()) & {1, 2, 3}
    method, recorded = cps_method(tmp_path)
    method.training_losses({"labeled": labeled, "unlabeled": unlabeled})
    logits_2 = recorded[1][0]
    for i, raw in enumerate(labeled["image"][:, 0].numpy()):
        unrotated = {t: logits_of(tree_filter(raw, t, AREA)) for t in ("max", "min")}
        view_1 = labeled["image_1"][i, 0].numpy()
        tree_2 = "min" if np.array_equal(view_1, tree_filter(raw, "max", AREA)) else "max"
        assert torch.allclose(logits_2[i], unrotated[tree_2]), i


# -- configuration and refusals -------------------------------------------------------------
def test_off_by_default_and_on_for_the_la_experiment(tmp_path):
    cfg = compose_config("train", [*TINY, "method=dsaif"], tmp_path / "synthetic")
    assert cfg.filter.rotate_view_2 is False
    assert instantiate(cfg.filter).rotate_view_2 is False
    la = ["+experiment=la", "data.root=/none"]
    cfg = compose_config("train", la, tmp_path / "la")
    assert cfg.filter.rotate_view_2 is True and cfg.filter.area_threshold == 50
    assert instantiate(cfg.filter).rotate_view_2 is True
    cfg = compose_config("train", [*la, "filter.rotate_view_2=false"], tmp_path / "la_off")
    assert cfg.filter.rotate_view_2 is False
    cfg = compose_config("train", [*TINY, "method=dsaif", "filter.rotate_view_2=true"],
                         tmp_path / "synthetic_on")  # fmt: skip
    assert instantiate(cfg.filter).rotate_view_2 is True


def test_a_patch_not_square_in_plane_is_refused_with_the_setting_named():
    with pytest.raises(ValueError, match=r"rotate_view_2.*data.patch_size=\[8, 6, 4\].*8x6x4"):
        dsaif_views(rotate_view_2=True, patch_size=[8, 6, 4])
    views = TwoViews(identity, identity, p=1.0, rotate_view_2=True)
    with pytest.raises(ValueError, match="rotate_view_2.*8x6x4"):
        views({"image": torch.zeros(1, 8, 6, 4)})


def test_methods_that_do_not_rotate_back_refuse_rotated_views(tmp_path):
    cfg = compose_config("train", [*TINY, "method=supervised"], tmp_path / "run")
    method = instantiate(cfg.method)
    batch = {"labeled": {"image_1": torch.zeros(2, 1, 8, 8), "rot_k_2": torch.tensor([0, 1])}}
    with pytest.raises(ValueError, match="rotate_view_2=true.*Supervised"):
        method.training_step(batch, 0)


def test_device_batches_leave_rotated_views_to_the_host():
    plan, reason = view_plan(TwoViews(identity, identity, rotate_view_2=True))
    assert plan is None and "rotate_view_2" in reason
