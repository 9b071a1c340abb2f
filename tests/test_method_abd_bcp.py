"""ABD on BCP: the stage switch (network 2 and the teacher start from network 1's stage-1
weights), which view each network and the teacher see, ABD-R on the *mixed* batches with the
BCP script's half KL-guided / half most-confident donor, and the weights of the loss terms."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from segssl.methods import AdaptiveBidirectionalDisplacementBCP
from segssl.methods import abd_bcp as abd_bcp_module
from segssl.methods.mixing import (
    from_patches,
    mixed_reliable_displacement,
    reliable_displacement,
    to_patches,
)
from segssl.methods.region_losses import soft_dice_loss
from tests.conftest import TINY, compose_config
from tests.helpers.networks import Recorder

MODEL = {"_target_": "segssl.models.unet.UNet", "in_channels": 1, "out_channels": 4,
         "features": [4, 4, 8, 8, 8]}  # fmt: skip
SIZE = 16


def make_method(**kwargs) -> AdaptiveBidirectionalDisplacementBCP:
    method = AdaptiveBidirectionalDisplacementBCP(
        model=MODEL,
        num_classes=4,
        class_names=["RV", "Myo", "LV"],
        optimizer={"_target_": "torch.optim.SGD", "lr": 0.01},
        evaluation={"image_size": SIZE},
        **kwargs,
    )
    method._trainer = SimpleNamespace(max_steps=8, global_step=0, sanity_checking=False)
    return method


# -- ABD-R as the BCP script does it ---------------------------------------------------------
def confidence_from(values: list[float]) -> torch.Tensor:
    """(1, 8, 8) confidence map whose 4x4 patch k has mean values[k]."""
    return from_patches(torch.tensor(values).view(1, 16, 1, 1).expand(1, 16, 2, 2), 4)


def logits_from(dists: dict[int, list[float]]) -> torch.Tensor:
    per_patch = torch.zeros(16, 3)
    for k, p in dists.items():
        per_patch[k] = torch.tensor(p).log()
    return from_patches(per_patch.T.reshape(1, 3, 16, 1, 1).expand(1, 3, 16, 2, 2), 4)


def test_mixed_displacement_is_kl_guided_or_takes_the_most_confident_patch():
    # view 2's most confident patch (15) is not the KL-closest (13) to view 1's weakest (0)
    conf_1 = confidence_from([0.1] + [0.5] * 14 + [0.99])
    conf_2 = confidence_from([0.5] * 5 + [0.2] + [0.5] * 6 + [0.95, 0.96, 0.97, 0.98])
    logits_1 = logits_from({0: [0.1, 0.1, 0.8], 15: [0.6, 0.3, 0.1]})
    logits_2 = logits_from({5: [0.6, 0.3, 0.1], 13: [0.1, 0.1, 0.8], 15: [0.8, 0.1, 0.1]})
    images_1 = torch.arange(64, dtype=torch.float32).view(1, 8, 8)
    images_2 = -images_1 - 1
    args = (images_1, images_2, conf_1, conf_2, logits_1, logits_2, 4, 4)
    guided = mixed_reliable_displacement(*args, p=1.0)
    plain = mixed_reliable_displacement(*args, p=0.0)
    reference = reliable_displacement(*args)
    assert guided[2]["donor_1"].tolist() == [13] and plain[2]["donor_1"].tolist() == [15]
    assert torch.equal(guided[0], reference[0]) and torch.equal(guided[1], reference[1])
    assert guided[2]["guided"].tolist() == [True] and plain[2]["guided"].tolist() == [False]
    # the most confident branch: view 1's weakest patch 0 <- view 2's best 15, view 2's weakest
    # 5 <- view 1's best 15
    new_1, new_2 = (to_patches(t, 4)[0] for t in plain[:2])
    old_1, old_2 = to_patches(images_1, 4)[0], to_patches(images_2, 4)[0]
    assert torch.equal(new_1[0], old_2[15]) and torch.equal(new_1[1:], old_1[1:])
    assert torch.equal(new_2[5], old_1[15])
    # about half of the images take each branch
    torch.manual_seed(0)
    many = [t.expand(400, *t.shape[1:]) for t in args[:6]]
    share = mixed_reliable_displacement(*many, 4, 4, p=0.5)[2]["guided"].float().mean()
    assert 0.4 < float(share) < 0.6


# -- the core step ---------------------------------------------------------------------------
def fake_batch(n: int = 4) -> dict:
    g = torch.Generator().manual_seed(0)

    def images():
        return torch.rand(n, 1, SIZE, SIZE, generator=g)

    labels = torch.randint(0, 4, (n, 1, SIZE, SIZE), generator=g)
    labeled = {"image_1": images(), "image_2": images(), "label": labels}
    return {"labeled": labeled, "unlabeled": {"image_1": images(), "image_2": images()}}


def fixed_mask(monkeypatch) -> torch.Tensor:
    mask = torch.ones(SIZE, SIZE)
    mask[2:12, 3:13] = 0
    monkeypatch.setattr(abd_bcp_module, "copy_paste_mask", lambda *a, **k: mask)
    return mask


def test_stage_1_trains_network_1_alone_on_the_labeled_copy_paste(monkeypatch):
    method, batch = make_method(pretrain_steps=4), fake_batch()
    mask = fixed_mask(monkeypatch)
    for name in ("net1", "net2", "teacher"):
        method.networks[name] = Recorder(torch.randn(2, 4, SIZE, SIZE))
    losses = method.training_losses(batch)
    la, lb = batch["labeled"]["image_1"][:2], batch["labeled"]["image_1"][2:]
    assert [len(method.networks[n].inputs) for n in ("net1", "net2", "teacher")] == [1, 0, 0]
    assert torch.equal(method.networks["net1"].inputs[0], la * mask + lb * (1 - mask))
    assert set(losses) == {"loss", "mix_dice", "mix_ce"}
    assert torch.allclose(losses["loss"], (losses["mix_dice"] + losses["mix_ce"]) / 2)
    # network 2 is in the graph with a zero gradient (DDP needs every trained parameter used)
    losses["loss"].backward()
    assert method.networks["net2"].scale.grad == 0
    assert method.networks["net1"].scale.grad != 0


def test_stage_2_views_mixing_displacement_and_loss_weights(monkeypatch):
    # no cutout, no jitter: network 2's strong view is image_2 itself, so the test can follow it
    method = make_method(pretrain_steps=4, largest_component=False, cutout_p=0.0, jitter=0.0)
    method.guided_p = 1.0
    method._trainer.global_step = 5
    batch, mask = fake_batch(), fixed_mask(monkeypatch)
    g = torch.Generator().manual_seed(1)
    logits = {n: torch.randn(8, 4, SIZE, SIZE, generator=g) for n in ("net1", "net2", "teacher")}
    for name, value in logits.items():
        method.networks[name] = Recorder(value)
    losses = method.training_losses(batch)
    lab, unl = batch["labeled"], batch["unlabeled"]

    # the teacher labels each network's unlabeled halves from that network's view
    teacher = method.networks["teacher"].inputs
    assert [t.shape[0] for t in teacher] == [2, 2, 2, 2]
    assert torch.equal(torch.cat(teacher[:2]), unl["image_1"])
    assert torch.allclose(torch.cat(teacher[2:]), unl["image_2"], atol=1e-6)
    # each network learns BCP's two mixed batches of its own view, then both displaced batches
    mixed = {}
    for name, key in (("net1", "image_1"), ("net2", "image_2")):
        x_u, x_l, displaced = method.networks[name].inputs
        la, lb, ua, ub = lab[key][:2], lab[key][2:], unl[key][:2], unl[key][2:]
        # (network 2's jitter of factor 1 may move an intensity by a rounding error)
        assert torch.allclose(x_u, ua * mask + la * (1 - mask), atol=1e-6)
        assert torch.allclose(x_l, lb * mask + ub * (1 - mask), atol=1e-6)
        mixed[name] = torch.cat([x_u, x_l])
    assert torch.equal(method.networks["net1"].inputs[2], method.networks["net2"].inputs[2])

    # ABD-R acts on the mixed batches, with the networks' confidences on them
    out = {n: torch.cat([logits[n][:2], logits[n][:2]]) for n in ("net1", "net2")}
    probs = {n: out[n].softmax(1) for n in out}
    new_1, new_2, _ = reliable_displacement(
        mixed["net1"][:, 0], mixed["net2"][:, 0],
        probs["net1"].max(1).values, probs["net2"].max(1).values,
        out["net1"], out["net2"], 4, 4,
    )  # fmt: skip
    displaced = method.networks["net1"].inputs[2]
    assert displaced.shape[0] == 8
    assert torch.equal(displaced[:, 0], torch.cat([new_1, new_2]))
    changed = (to_patches(displaced[:4, 0], 4) != to_patches(mixed["net1"][:, 0], 4)).any((2, 3))
    assert changed.sum(1).tolist() == [1, 1, 1, 1]  # one patch per mixed image

    # cross pseudo supervision on the mixed and the displaced batches, weight 1, no ramp-up
    cps = soft_dice_loss(probs["net1"], probs["net2"].argmax(1)) + soft_dice_loss(
        probs["net2"], probs["net1"].argmax(1)
    )
    assert torch.allclose(losses["cps"], cps, atol=1e-6)
    expected = losses["mix_net1"] + losses["mix_net2"] + losses["cps"] + losses["cps_displaced"]
    assert torch.allclose(losses["loss"], expected)
    # network 1's mixed loss is BCP's: the same regions and weights (0.5 on pseudo-labels)
    ya, yb = lab["label"][:2, 0], lab["label"][2:, 0]
    plab = logits["teacher"][:2].argmax(1)
    d_u, c_u = method.mix_loss(logits["net1"][:2], plab, ya, mask, 0.5, 1.0)
    d_l, c_l = method.mix_loss(logits["net1"][:2], yb, plab, mask, 1.0, 0.5)
    assert torch.allclose(losses["mix_net1"], (d_u + d_l + c_u + c_l) / 2, atol=1e-6)


def test_stage_switch_starts_both_networks_and_the_teacher_from_network_1():
    method = make_method(pretrain_steps=2, stage2_init="last")
    net1, net2, teacher = (method.networks[n] for n in ("net1", "net2", "teacher"))
    optimizer = torch.optim.SGD(
        [{"params": net1.parameters()}, {"params": net2.parameters()}], lr=0.1, momentum=0.9
    )
    method._trainer.optimizers = [optimizer]
    # a stage-1 step: only network 1 has gradients and momentum
    net1(torch.rand(2, 1, SIZE, SIZE)).sum().backward()
    optimizer.step()
    assert not torch.equal(net1.out_conv.weight, net2.out_conv.weight)
    method._trainer.global_step = 2
    method.on_train_batch_start(None, 0)
    for other in (net2, teacher):
        for (name, a), b in zip(
            net1.state_dict().items(), other.state_dict().values(), strict=True
        ):
            assert torch.equal(a, b), name
    moment = optimizer.state[net1.out_conv.weight]["momentum_buffer"]
    copied = optimizer.state[net2.out_conv.weight]["momentum_buffer"]
    assert torch.equal(moment, copied) and copied.data_ptr() != moment.data_ptr()
    # after the step, the teacher follows network 1 only (EMA 0.99)
    with torch.no_grad():
        net1.out_conv.weight.add_(1.0)
        net2.out_conv.weight.add_(5.0)
    before = teacher.out_conv.weight.clone()
    method._trainer.global_step = 3
    method.on_train_batch_end(None, None, 0)
    assert torch.allclose(teacher.out_conv.weight, 0.99 * before + 0.01 * net1.out_conv.weight)


def test_network_2_of_another_architecture_is_refused():
    with pytest.raises(ValueError, match="model_2"):
        make_method(model_2=MODEL)


def test_abd_bcp_trains_through_both_stages_with_dsaif(run_task):
    output_dir, result, _ = run_task(
        [
            *TINY,
            "method=abd_bcp",
            "filter=dsaif",
            "model=unet_ssl4mis",
            "trainer.max_steps=4",
            "method.pretrain_steps=0.5",
        ]
    )
    checkpoint = torch.load(output_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert int(checkpoint["state_dict"]["stage1_steps"]) == 2
    assert set(result["models"]) == {"net1", "net2", "ensemble"}
    assert result["selection_model"] == "net1"


@pytest.mark.parametrize(("method", "trained"), [("abd_bcp", 2), ("admt", 1), ("bcp", 1)])
def test_memory_check_counts_the_trained_networks(method, trained, tmp_path, tiny_data_dir):
    """ABD-BCP trains two of its three networks (the teacher has no gradients): the activation
    estimate of ``segssl.runs.settings_check`` must count two, not one."""
    from segssl.runs.settings_check import _trained_networks

    cfg = compose_config("train", [*TINY, f"method={method}"], tmp_path, tiny_data_dir)
    assert _trained_networks(cfg) == trained
