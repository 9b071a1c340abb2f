"""BCP: the copy-paste mask, where each mixed pixel and its target come from, the weights of
pseudo-labelled regions, the largest connected component, and the stage switch (resume-safe)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segssl.methods import BidirectionalCopyPaste
from segssl.methods import bcp as bcp_module
from segssl.methods.mixing import copy_paste_mask, largest_component, paste
from segssl.methods.region_losses import soft_dice_loss
from segssl.methods.steps import resolve_steps
from tests.conftest import TINY
from tests.helpers.networks import Recorder

MODEL = {"_target_": "segssl.models.unet.UNet", "in_channels": 1, "out_channels": 4,
         "features": [4, 4, 8, 8, 8]}  # fmt: skip


def make_bcp(**kwargs) -> BidirectionalCopyPaste:
    method = BidirectionalCopyPaste(
        model=MODEL,
        num_classes=4,
        class_names=["RV", "Myo", "LV"],
        optimizer={"_target_": "torch.optim.SGD", "lr": 0.01},
        evaluation={"image_size": 16},
        **kwargs,
    )
    method._trainer = SimpleNamespace(max_steps=8, global_step=0, sanity_checking=False)
    return method


def test_mask_is_a_two_thirds_zero_box_anywhere_inside():
    corners = set()
    for _ in range(300):
        mask = copy_paste_mask(32, 48)
        zeros = (mask == 0).nonzero()
        top, left = zeros.min(0).values.tolist()
        bottom, right = zeros.max(0).values.tolist()
        assert (bottom - top + 1, right - left + 1) == (21, 32)  # int(2/3 * 32), int(2/3 * 48)
        assert int((mask == 0).sum()) == 21 * 32 and set(mask.unique().tolist()) == {0.0, 1.0}
        corners.add((top, left))
    tops, lefts = {t for t, _ in corners}, {c for _, c in corners}
    assert tops == set(range(0, 11)) and lefts == set(range(0, 16))  # randint(0, H - box)


def test_paste_takes_the_box_from_the_second_image():
    mask = copy_paste_mask(16, 16)
    outer, inner = torch.full((2, 1, 16, 16), 1.0), torch.full((2, 1, 16, 16), 2.0)
    mixed = paste(outer, inner, mask)
    assert torch.equal(mixed[:, 0][:, mask == 0], torch.full((2, int((mask == 0).sum())), 2.0))
    assert torch.equal(mixed[:, 0][:, mask == 1], torch.full((2, int(mask.sum())), 1.0))


def test_largest_component_per_class_with_8_connectivity():
    labels = torch.zeros(2, 10, 10, dtype=torch.long)
    labels[0, 0:2, 0:2] = 1  # 4 pixels
    labels[0, 5:8, 5:8] = 1  # 9 pixels: kept
    labels[0, 8, 8] = 1  # touches the 3x3 block diagonally: same component (8-connected)
    labels[0, 0, 9] = 2  # a lone class-2 pixel is its class's largest component
    labels[1, 3, 3] = 3
    out = largest_component(labels, num_classes=4)
    expected = torch.zeros_like(labels)
    expected[0, 5:8, 5:8] = 1
    expected[0, 8, 8] = 1
    expected[0, 0, 9] = 2
    expected[1, 3, 3] = 3
    assert torch.equal(out, expected)


def fake_batch(n: int = 4, size: int = 12) -> dict:
    g = torch.Generator().manual_seed(0)

    def images():
        return torch.rand(n, 1, size, size, generator=g)

    labels = torch.randint(0, 4, (n, 1, size, size), generator=g)
    labeled = {"image_1": images(), "image_2": images(), "label": labels}
    return {"labeled": labeled, "unlabeled": {"image_1": images(), "image_2": images()}}


def fixed_mask(monkeypatch, size: int = 12) -> torch.Tensor:
    mask = torch.ones(size, size)
    mask[2:10, 3:11] = 0
    monkeypatch.setattr(bcp_module, "copy_paste_mask", lambda *a, **k: mask)
    return mask


def test_stage_1_mixes_labeled_halves_and_supervises_each_region(monkeypatch):
    method, batch = make_bcp(pretrain_steps=4), fake_batch()
    mask = fixed_mask(monkeypatch)
    logits = torch.randn(2, 4, 12, 12)
    method.networks["student"] = student = Recorder(logits)
    losses = method.training_losses(batch)
    la, lb = batch["labeled"]["image_1"][:2], batch["labeled"]["image_1"][2:]
    (x,) = student.inputs
    assert torch.equal(x, la * mask + lb * (1 - mask))
    ya, yb = batch["labeled"]["label"][:2, 0], batch["labeled"]["label"][2:, 0]
    ce = (
        F.cross_entropy(logits, ya, reduction="none")[:, mask == 1].mean()
        + F.cross_entropy(logits, yb, reduction="none")[:, mask == 0].mean()
    )
    probs = logits.softmax(1)
    dice = soft_dice_loss(probs, ya, mask, 1e-10) + soft_dice_loss(probs, yb, 1 - mask, 1e-10)
    assert torch.allclose(losses["loss"], (ce + dice) / 2, atol=1e-6)


def test_stage_2_inputs_pseudo_labels_and_weights(monkeypatch):
    method, batch = make_bcp(pretrain_steps=4, largest_component=False), fake_batch()
    method._trainer.global_step = 5
    mask = fixed_mask(monkeypatch)
    teacher_logits, student_logits = torch.randn(2, 4, 12, 12), torch.randn(2, 4, 12, 12)
    method.networks["teacher"] = teacher = Recorder(teacher_logits)
    method.networks["student"] = student = Recorder(student_logits)
    losses = method.training_losses(batch)
    lab, unl = batch["labeled"], batch["unlabeled"]
    # the teacher labels the unlabeled halves from image_2, one call each
    assert [t.shape[0] for t in teacher.inputs] == [2, 2]
    assert torch.equal(torch.cat(teacher.inputs), unl["image_2"])
    # the student sees x_u = ua M + la (1 - M) and x_l = lb M + ub (1 - M), from image_1
    la, lb, ua, ub = lab["image_1"][:2], lab["image_1"][2:], unl["image_1"][:2], unl["image_1"][2:]
    x_u, x_l = student.inputs
    assert torch.equal(x_u, ua * mask + la * (1 - mask))
    assert torch.equal(x_l, lb * mask + ub * (1 - mask))
    # targets: pseudo-labels outside the box of x_u (weight 0.5), labels inside (1); x_l the
    # other way round
    plab = teacher_logits.argmax(1)
    ya, yb = lab["label"][:2, 0], lab["label"][2:, 0]

    def region_ce(target, region):
        return F.cross_entropy(student_logits, target, reduction="none")[:, region].mean()

    out, box = mask == 1, mask == 0
    ce = (
        0.5 * region_ce(plab, out)
        + region_ce(ya, box)
        + region_ce(yb, out)
        + 0.5 * region_ce(plab, box)
    )
    p = student_logits.softmax(1)
    dice = (
        0.5 * soft_dice_loss(p, plab, mask, 1e-10)
        + soft_dice_loss(p, ya, 1 - mask, 1e-10)
        + soft_dice_loss(p, yb, mask, 1e-10)
        + 0.5 * soft_dice_loss(p, plab, 1 - mask, 1e-10)
    )
    assert torch.allclose(losses["mix_ce"], ce, atol=1e-6)
    assert torch.allclose(losses["loss"], (ce + dice) / 2, atol=1e-6)


class Answers(nn.Module):
    """A fake network answering its calls with the given logits in turn."""

    def __init__(self, *answers: torch.Tensor) -> None:
        super().__init__()
        self.answers = list(answers)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.answers.pop(0) * self.scale


def test_stage_2_train_dice_counts_exactly_the_labeled_pixels(monkeypatch):
    """``train/dice_student`` in stage 2 scores la's box (in x_u) and lb's rest (in x_l): a
    student right there and wrong on every unlabeled pixel scores 1; the reverse scores 0."""
    batch = fake_batch()
    mask = fixed_mask(monkeypatch)
    ya, yb = batch["labeled"]["label"][:2, 0], batch["labeled"]["label"][2:, 0]
    box = (mask == 0)[None]

    def logits(labels: torch.Tensor) -> torch.Tensor:
        return F.one_hot(labels, 4).permute(0, 3, 1, 2).float() * 10

    def wrong(labels: torch.Tensor) -> torch.Tensor:
        return (labels + 1) % 4  # a different class on every pixel

    right_u = torch.where(box, ya, wrong(ya))  # x_u: la shows inside the box
    right_l = torch.where(box, wrong(yb), yb)  # x_l: lb shows outside it
    wrong_u, wrong_l = torch.where(box, wrong(ya), ya), torch.where(box, yb, wrong(yb))
    for (out_u, out_l), expected in (((right_u, right_l), 1.0), ((wrong_u, wrong_l), 0.0)):
        method = make_bcp(pretrain_steps=4, largest_component=False)
        method._trainer.global_step = 5
        method.networks["teacher"] = Recorder(torch.randn(2, 4, 12, 12))
        method.networks["student"] = Answers(logits(out_u), logits(out_l))
        method.training_losses(batch)
        assert float(method.train_dice["student"].compute()) == pytest.approx(expected)


def test_unequal_halves_are_refused_with_the_settings_to_change():
    method, batch = make_bcp(pretrain_steps=0), fake_batch()
    batch["unlabeled"] = {k: v[:2] for k, v in batch["unlabeled"].items()}
    with pytest.raises(ValueError, match="data.labeled_batch_size"):
        method.training_losses(batch)


def test_stage_switch_ema_and_boundary_survive_a_checkpoint():
    assert resolve_steps(0.25, 40000, "k") == 10000 and resolve_steps(7, 10, "k") == 7
    with pytest.raises(ValueError, match="method.pretrain_steps"):
        resolve_steps(0.5, -1, "method.pretrain_steps")
    method = make_bcp(pretrain_steps=0.25, stage2_init="last")  # 2 of 8 steps
    student, teacher = method.networks["student"], method.networks["teacher"]
    with torch.no_grad():
        student.out_conv.weight.add_(1.0)
    method._trainer.global_step = 1
    method.on_train_batch_start(None, 0)  # stage 1: nothing moves
    assert not torch.equal(teacher.out_conv.weight, student.out_conv.weight)
    method.on_train_batch_end(None, None, 0)  # batch 0 was stage 1: no EMA
    assert not torch.equal(teacher.out_conv.weight, student.out_conv.weight)
    method._trainer.global_step = 2
    method.on_train_batch_start(None, 0)  # the switch: teacher <- student
    assert torch.equal(teacher.out_conv.weight, student.out_conv.weight)
    assert int(method.stage1_steps) == 2
    with torch.no_grad():
        student.out_conv.weight.add_(1.0)
    before = teacher.out_conv.weight.clone()
    method._trainer.global_step = 3
    method.on_train_batch_end(None, None, 0)  # EMA 0.99
    expected = 0.99 * before + 0.01 * student.out_conv.weight
    assert torch.allclose(teacher.out_conv.weight, expected)
    # a resumed run that extends max_steps keeps the boundary and the teacher
    state = method.state_dict()
    resumed = make_bcp(pretrain_steps=0.25, stage2_init="last")
    resumed._trainer.max_steps = 80
    resumed.load_state_dict(state)
    assert resumed.boundary() == 2
    assert torch.equal(resumed.networks["teacher"].out_conv.weight, teacher.out_conv.weight)


def test_stage_2_starts_from_the_best_stage_1_weights():
    method = make_bcp(pretrain_steps=4)
    student, teacher = method.networks["student"], method.networks["teacher"]
    method.boundary()
    for step, dice in ((2, 0.6), (4, 0.4)):
        method._trainer.global_step = step
        with torch.no_grad():
            student.out_conv.weight.fill_(step)
        summary = {"models": {"student": {"mean": {"dice": dice}, "per_class": {}}}}
        method.evaluator.summarize = lambda summary=summary: summary
        method.log = method.log_dict = lambda *a, **k: None
        method.on_validation_epoch_end()
    assert float(method.stage1_best) == pytest.approx(0.6)
    method._trainer.global_step = 4
    method.on_train_batch_start(None, 0)
    assert torch.all(student.out_conv.weight == 2) and torch.all(teacher.out_conv.weight == 2)


def test_bcp_trains_through_both_stages_and_checkpoints_the_boundary(run_task):
    output_dir, result, _ = run_task(
        [
            *TINY,
            "method=bcp",
            "filter=dsaif",
            "model=unet_ssl4mis",
            "trainer.max_steps=4",
            "method.pretrain_steps=0.5",
        ]
    )
    checkpoint = torch.load(output_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 4
    assert int(checkpoint["state_dict"]["stage1_steps"]) == 2
    assert torch.isfinite(checkpoint["state_dict"]["stage1_best"])  # validation at step 2
    assert set(result["models"]) == {"student"}
