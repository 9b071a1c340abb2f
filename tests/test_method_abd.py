"""ABD: the patch grid, which patch is displaced by which (ABD-R on unlabeled, ABD-I on labeled
images and labels), the strong view's cutout labels, and the weights of the loss terms."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from segssl.methods import AdaptiveBidirectionalDisplacement
from segssl.methods.mixing import (
    from_patches,
    inverse_displacement,
    patch_means,
    reliable_displacement,
    to_patches,
)

MODEL = {"_target_": "segssl.models.unet.UNet", "in_channels": 1, "out_channels": 4,
         "features": [4, 4, 8, 8, 8]}  # fmt: skip


def test_patch_grid_order_and_round_trip():
    x = torch.arange(2 * 8 * 8, dtype=torch.float32).reshape(2, 8, 8)
    patches = to_patches(x, 4)
    assert patches.shape == (2, 16, 2, 2)
    assert torch.equal(patches[0, 6], x[0, 2:4, 4:6])  # patch 6: row 1, column 2
    assert torch.equal(from_patches(patches, 4), x)
    assert torch.equal(patch_means(x, 4)[1, 6], x[1, 2:4, 4:6].mean())
    with pytest.raises(ValueError, match="method.grid=3"):
        to_patches(x, 3)


def confidence_from(values: list[float]) -> torch.Tensor:
    """(1, 8, 8) confidence map whose 4x4 patch k has mean values[k]."""
    return from_patches(torch.tensor(values).view(1, 16, 1, 1).expand(1, 16, 2, 2), 4)


def logits_from(dists: dict[int, list[float]]) -> torch.Tensor:
    """(1, 3, 8, 8) logits, patch k constant at log(dists[k]) (uniform elsewhere)."""
    per_patch = torch.zeros(16, 3)
    for k, p in dists.items():
        per_patch[k] = torch.tensor(p).log()
    patches = per_patch.T.reshape(1, 3, 16, 1, 1).expand(1, 3, 16, 2, 2)
    return from_patches(patches, 4)


def test_reliable_displacement_picks_the_closest_of_the_most_confident_patches():
    top_1 = {15: 0.99, 1: 0.98, 2: 0.97, 3: 0.96}  # view 1's weakest patch: 0
    conf_1 = confidence_from([0.1] + [top_1.get(k, 0.5) for k in range(1, 16)])
    conf_2 = confidence_from([0.5] * 5 + [0.2] + [0.5] * 6 + [0.95, 0.96, 0.97, 0.98])
    # view 2's weakest patch is 5; its top-4 are 12..15
    logits_1 = logits_from({0: [0.1, 0.1, 0.8], 15: [0.1, 0.8, 0.1], 1: [0.7, 0.2, 0.1]})
    logits_2 = logits_from({5: [0.6, 0.3, 0.1], 13: [0.1, 0.1, 0.8], 15: [0.8, 0.1, 0.1]})
    images_1 = torch.arange(64, dtype=torch.float32).view(1, 8, 8)
    images_2 = -torch.arange(64, dtype=torch.float32).view(1, 8, 8)
    new_1, new_2, chosen = reliable_displacement(
        images_1, images_2, conf_1, conf_2, logits_1, logits_2
    )
    # view 1's patch 0 (class 2-like) gets view 2's top-4 patch closest to it: 13
    # view 2's patch 5 (class 0-like) gets view 1's top-4 patch closest to it: 1
    assert {k: v.tolist() for k, v in chosen.items()} == {
        "weak_1": [0],
        "weak_2": [5],
        "donor_1": [13],
        "donor_2": [1],
    }
    p1, p2 = to_patches(images_1, 4), to_patches(images_2, 4)
    n1, n2 = to_patches(new_1, 4), to_patches(new_2, 4)
    assert torch.equal(n1[0, 0], p2[0, 13]) and torch.equal(n1[0, 1:], p1[0, 1:])
    assert torch.equal(n2[0, 5], p1[0, 1])
    assert torch.equal(n2[0, :5], p2[0, :5]) and torch.equal(n2[0, 6:], p2[0, 6:])


def test_inverse_displacement_moves_the_least_confident_patch_onto_the_most_confident():
    conf_1 = confidence_from([0.5] * 3 + [0.9] + [0.5] * 6 + [0.1] + [0.5] * 5)  # best 3, worst 10
    conf_2 = confidence_from(
        [0.5] * 7 + [0.05] + [0.5] * 4 + [0.99] + [0.5] * 3
    )  # best 12, worst 7
    images_1, images_2 = torch.rand(1, 8, 8), torch.rand(1, 8, 8)
    labels_1, labels_2 = torch.randint(0, 4, (1, 8, 8)), torch.randint(0, 4, (1, 8, 8))
    out = inverse_displacement(images_1, images_2, labels_1, labels_2, conf_1, conf_2, p=1.0)
    for new_1, new_2, old_1, old_2 in ((out[0], out[1], images_1, images_2),
                                       (out[2], out[3], labels_1, labels_2)):  # fmt: skip
        n1, n2, o1, o2 = (to_patches(t, 4)[0] for t in (new_1, new_2, old_1, old_2))
        assert torch.equal(n1[3], o2[7]) and torch.equal(n2[12], o1[10])
        keep_1, keep_2 = [k for k in range(16) if k != 3], [k for k in range(16) if k != 12]
        assert torch.equal(n1[keep_1], o1[keep_1]) and torch.equal(n2[keep_2], o2[keep_2])
    untouched = inverse_displacement(images_1, images_2, labels_1, labels_2, conf_1, conf_2, p=0.0)
    assert all(
        torch.equal(a, b)
        for a, b in zip(untouched, (images_1, images_2, labels_1, labels_2), strict=True)
    )


def make_abd(step: int, max_steps: int = 30, **kwargs) -> AdaptiveBidirectionalDisplacement:
    method = AdaptiveBidirectionalDisplacement(
        model=MODEL,
        num_classes=4,
        class_names=["RV", "Myo", "LV"],
        optimizer={"_target_": "torch.optim.SGD", "lr": 0.01},
        evaluation={"image_size": 16},
        rampup_steps=30,
        **kwargs,
    )
    method._trainer = SimpleNamespace(max_steps=max_steps, global_step=step)
    return method


def batch(n: int = 2, size: int = 16) -> dict:
    torch.manual_seed(0)
    labeled = {
        "image_1": torch.rand(n, 1, size, size),
        "image_2": torch.rand(n, 1, size, size),
        "label": torch.randint(0, 4, (n, 1, size, size)),
    }
    return {
        "labeled": labeled,
        "unlabeled": {k: torch.rand(n, 1, size, size) for k in ("image_1", "image_2")},
    }


def test_strong_view_sets_labels_to_background_in_the_cutout_box():
    torch.manual_seed(3)
    method = make_abd(0, cutout_p=1.0, jitter=0.0)  # jitter 0: factors 1, images unchanged
    images, labels = torch.full((3, 1, 16, 16), 0.5), torch.full((2, 16, 16), 2)
    strong, strong_labels = method.strong_view(images, labels)
    changed = strong[:, 0] != 0.5
    assert changed.any(dim=(1, 2)).all()  # a box in every image, filled with 0/1 noise
    assert set(strong[:, 0][changed].unique().tolist()) <= {0.0, 1.0}
    box = strong_labels == 0
    assert torch.equal(box, changed[:2])  # noise is never 0.5: the box exactly
    assert (strong_labels[~box] == 2).all() and box.float().mean() < 0.5


@pytest.mark.parametrize(("step", "labeled_term"), [(10, True), (21, False)])
def test_loss_weights_and_labeled_displacement_dropped_after_its_step(step, labeled_term):
    method = make_abd(step, labeled_until=2 / 3)  # until step 20 of 30
    losses = method.training_losses(batch())
    assert ("sup_displaced" in losses) == labeled_term
    ramp = torch.exp(torch.tensor(-5.0 * (1 - step / 30) ** 2))
    expected = losses["sup_1"] + losses["sup_2"]
    expected = expected + 0.1 * ramp * (losses["cps"] + losses["cps_displaced"])
    if labeled_term:
        expected = expected + 2.0 * losses["sup_displaced"]
    assert torch.allclose(losses["loss"], expected, atol=1e-5)
    losses["loss"].backward()
    for name in ("net1", "net2"):
        assert method.networks[name].out_conv.weight.grad.abs().sum() > 0
