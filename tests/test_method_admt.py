"""AD-MT: the teachers' turns (which teacher is updated when, random periods, checkpointed),
the EMA decay schedule, the entropy-weighted teacher ensemble, the conflict rule against the
student, which images each network sees in each turn (CutMix in teacher 2's), and the loss."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from segssl.methods import AlternateDiverseTeaching
from segssl.methods import admt as admt_module
from segssl.methods.admt import combat_conflicts, fuse_teachers
from segssl.methods.mixing import beta_cutmix_boxes
from segssl.methods.region_losses import dice_ce_loss, soft_dice_loss
from tests.conftest import TINY
from tests.helpers.networks import Recorder

MODEL = {"_target_": "segssl.models.unet.UNet", "in_channels": 1, "out_channels": 3,
         "features": [4, 4, 8, 8, 8]}  # fmt: skip
SIZE = 16


def make_method(max_steps: int = 100, **kwargs) -> AlternateDiverseTeaching:
    method = AlternateDiverseTeaching(
        model=MODEL,
        num_classes=3,
        class_names=["a", "b"],
        optimizer={"_target_": "torch.optim.SGD", "lr": 0.01},
        evaluation={"image_size": SIZE},
        **kwargs,
    )
    method._trainer = SimpleNamespace(max_steps=max_steps, global_step=0, sanity_checking=False)
    return method


# -- the conflict-combating pieces -----------------------------------------------------------
def probs_at(*pixels: list[float]) -> torch.Tensor:
    """(1, C, 1, P) class probabilities, one list per pixel."""
    return torch.tensor(pixels).T[None, :, None, :]


def test_teacher_ensemble_weights_each_pixel_by_its_entropy():
    sure, unsure = [0.9, 0.05, 0.05], [0.2, 0.5, 0.3]
    p1, p2 = probs_at(sure, unsure), probs_at(unsure, [0.1, 0.8, 0.1])
    conf, label, conflict = fuse_teachers(p1, p2)

    def entropy(p):
        return -sum(q * math.log2(q) for q in p)

    for pixel, (a, b) in enumerate(((sure, unsure), (unsure, [0.1, 0.8, 0.1]))):
        w = math.exp(-entropy(a)) / (math.exp(-entropy(a)) + math.exp(-entropy(b)))
        fused = [w * x + (1 - w) * y for x, y in zip(a, b, strict=True)]
        assert float(conf[0, 0, pixel]) == pytest.approx(max(fused), abs=1e-5)
        assert int(label[0, 0, pixel]) == fused.index(max(fused))
    assert conflict[0, 0].tolist() == [True, False]  # argmax 0 vs 1; then 1 vs 1
    # sharpening with temperature 0.5 squares then renormalises
    sharp = fuse_teachers(p1, p1, temperature=0.5)[0]
    assert float(sharp[0, 0, 0]) == pytest.approx(0.81 / (0.81 + 2 * 0.0025), abs=1e-5)


def test_student_replaces_the_label_only_where_teachers_conflict_and_it_is_surer():
    # pixels: teachers agree | conflict, student surer | conflict, student less sure |
    #         conflict, student agrees with the fused label
    label = torch.tensor([[[1, 1, 1, 1]]])
    conf = torch.tensor([[[0.6, 0.6, 0.6, 0.6]]])
    student_label = torch.tensor([[[2, 2, 2, 1]]])
    student_conf = torch.tensor([[[0.99, 0.99, 0.3, 0.99]]])
    conflict = torch.tensor([[[False, True, True, True]]])
    new_label, new_conf = combat_conflicts(label, conf, student_label, student_conf, conflict)
    assert new_label.tolist() == [[[1, 2, 1, 1]]]
    assert new_conf[0, 0].tolist() == pytest.approx([0.6, 0.99, 0.6, 0.6])
    always = combat_conflicts(label, conf, student_label, student_conf, conflict, "student")
    assert always[0].tolist() == [[[1, 2, 2, 1]]]
    never = combat_conflicts(label, conf, student_label, student_conf, conflict, "teacher")
    assert torch.equal(never[0], label)
    with pytest.raises(ValueError, match="method.conflict_mode"):
        combat_conflicts(label, conf, student_label, student_conf, conflict, "latest")


def test_cutmix_boxes_share_one_size_and_stay_inside():
    torch.manual_seed(0)
    for _ in range(20):
        boxes = beta_cutmix_boxes(6, 64, 48)
        assert boxes.shape == (6, 64, 48) and set(boxes.unique().tolist()) <= {0.0, 1.0}
        rows, cols = boxes.any(2), boxes.any(1)
        # unclipped boxes (not touching the far border) all have the same sides
        sides = {
            (int(r.sum()), int(c.sum()))
            for r, c in zip(rows, cols, strict=True)
            if r.any() and not r[-1] and not c[-1] and not r[0] and not c[0]
        }
        assert len(sides) <= 1


# -- the alternation and the EMA -----------------------------------------------------------
def step(method: AlternateDiverseTeaching, global_step: int) -> None:
    method._trainer.global_step = global_step + 1  # Lightning counts the step just taken
    method.on_train_batch_end(None, None, 0)


def test_fixed_turns_alternate_the_teacher_that_follows_the_student():
    method = make_method(period=3, random_period=False, ema_warmup=0)
    student = method.networks["student"]
    active = []
    for s in range(9):
        active.append(method.active_teacher())
        before = {k: method.networks[k].out_conv.weight.clone() for k in ("teacher_1", "teacher_2")}
        with torch.no_grad():
            student.out_conv.weight.add_(1.0)
        step(method, s)
        moved = [
            k for k in before if not torch.equal(before[k], method.networks[k].out_conv.weight)
        ]
        assert moved == [f"teacher_{active[-1]}"]
    assert active == [1, 1, 1, 2, 2, 2, 1, 1, 1]


def test_random_turns_last_1_to_period_steps_and_every_rank_draws_the_same():
    runs = []
    for _ in range(2):
        torch.manual_seed(7)  # seed_everything: the same seed on every rank
        method = make_method(period=5)
        sequence = []
        for s in range(200):
            sequence.append(method.active_teacher())
            step(method, s)
        runs.append(sequence)
    assert runs[0] == runs[1]
    # turn lengths from the sequence of active teachers (the last turn may be cut short)
    lengths, count = [], 1
    for a, b in zip(runs[0], runs[0][1:], strict=False):
        if a == b:
            count += 1
        else:
            lengths.append(count)
            count = 1
    assert set(lengths) <= set(range(1, 6)) and len(set(lengths)) >= 3
    assert runs[0][0] == 1


def test_turn_state_survives_a_checkpoint():
    method = make_method(period=50)
    for s in range(7):
        step(method, s)
    state = list(method.turn_state())
    resumed = make_method(period=50)
    resumed.load_state_dict(method.state_dict())
    assert resumed.turn_state() == state and resumed.turn.tolist() == state


def test_ema_decay_is_a_copy_during_warm_up_then_ramps_to_its_cap():
    method = make_method(max_steps=30000, ema_warmup=0.003333)  # the code's 100 of 30000
    assert [method.ema_momentum(s) for s in (0, 99, 100, 101)] == [0.0, 0.0, 0.0, 0.0]
    assert method.ema_momentum(102) == pytest.approx(0.5)  # half step 51: 1 - 1/2
    assert method.ema_momentum(104) == pytest.approx(2 / 3)
    assert method.ema_momentum(20000) == pytest.approx(0.99)


# -- the core step ---------------------------------------------------------------------------
def fake_batch(n: int = 2) -> dict:
    g = torch.Generator().manual_seed(0)

    def images():
        return torch.rand(n, 1, SIZE, SIZE, generator=g)

    labels = torch.randint(0, 3, (n, 1, SIZE, SIZE), generator=g)
    labeled = {"image_1": images(), "image_2": images(), "label": labels}
    return {"labeled": labeled, "unlabeled": {"image_1": images(), "image_2": images()}}


def with_recorders(method: AlternateDiverseTeaching) -> dict:
    g = torch.Generator().manual_seed(3)
    logits = {n: torch.randn(6, 3, SIZE, SIZE, generator=g) * 8 for n in method.network_names}
    for name, value in logits.items():
        method.networks[name] = Recorder(value)
    return logits


@pytest.mark.parametrize("active", [1, 2])
def test_each_turn_feeds_its_view_and_its_augmentation(active, monkeypatch):
    method = make_method(max_steps=100, rampup_steps=0.25, jitter=0.0, blur_p=0.0)
    method._turn = [active, 0, 5]
    method._trainer.global_step = 10
    box = torch.zeros(2, SIZE, SIZE)
    box[:, 4:10, 2:12] = 1
    monkeypatch.setattr(admt_module, "beta_cutmix_boxes", lambda *a, **k: box)
    monkeypatch.setattr(torch, "randperm", lambda n, **k: torch.arange(n).flip(0))
    logits = with_recorders(method)
    batch = fake_batch()
    losses = method.training_losses(batch)
    lab, unl = batch["labeled"], batch["unlabeled"]
    view = f"image_{active}"

    # each teacher predicts its own view; the active one in train mode, the other in eval mode
    for k in (1, 2):
        teacher = method.networks[f"teacher_{k}"]
        assert torch.equal(teacher.inputs[0], unl[f"image_{k}"])
        assert teacher.modes == [k == active] and teacher.training
    # the student: labeled, weak and strong/mixed images of the active teacher's view
    (student_input,) = method.networks["student"].inputs
    x, weak, strong = student_input.split(2)
    assert torch.equal(x, lab[view]) and torch.equal(weak, unl[view])
    inside = box[:, None] > 0
    if active == 1:  # strong augmentation (jitter of factor 1, no blur): the weak image
        assert torch.allclose(strong, weak, atol=1e-6)
    else:  # CutMix: the partner's pixels in the box
        assert torch.equal(strong, torch.where(inside, weak.flip(0), weak))

    # the unlabeled target: fused teachers, mixed alike, then the conflict rule, Dice >= 0.95
    p1, p2 = (logits[f"teacher_{k}"][:2].softmax(1) for k in (1, 2))
    conf, label, conflict = fuse_teachers(p1, p2)
    if active == 2:
        conf, label, conflict = (
            torch.where(box > 0, t.flip(0), t) for t in (conf, label, conflict)
        )
    s_conf, s_label = logits["student"][2:4].softmax(1).max(1)
    label, conf = combat_conflicts(label, conf, s_label, s_conf, conflict)
    unsup = soft_dice_loss(logits["student"][4:6].softmax(1), label, (conf >= 0.95).float())
    sup = dice_ce_loss(logits["student"][:2], lab["label"][:, 0])
    assert torch.allclose(losses["unsup"], unsup, atol=1e-6)
    assert torch.allclose(losses["sup"], sup, atol=1e-6)
    weight = 2.0 * math.exp(-5 * (1 - 10 / 25) ** 2)
    assert torch.allclose(losses["loss"], sup + weight * unsup, atol=1e-6)
    assert float(losses["active_teacher"]) == active


def test_conflict_weight_splits_the_unlabeled_dice():
    method = make_method(conflict_weight=3.0, jitter=0.0, blur_p=0.0)
    method._turn = [1, 0, 5]
    logits = with_recorders(method)
    losses = method.training_losses(fake_batch())
    p1, p2 = (logits[f"teacher_{k}"][:2].softmax(1) for k in (1, 2))
    conf, label, conflict = fuse_teachers(p1, p2)
    s_conf, s_label = logits["student"][2:4].softmax(1).max(1)
    label, conf = combat_conflicts(label, conf, s_label, s_conf, conflict)
    probs, sure = logits["student"][4:6].softmax(1), conf >= 0.95
    expected = soft_dice_loss(probs, label, (sure & ~conflict).float())
    expected = expected + 3.0 * soft_dice_loss(probs, label, (sure & conflict).float())
    assert torch.allclose(losses["unsup"], expected, atol=1e-6)


def test_admt_trains_and_selects_the_student(run_task):
    output_dir, result, _ = run_task(
        [*TINY, "method=admt", "filter=dsaif", "model=unet_ssl4mis", "method.period=2"]
    )
    checkpoint = torch.load(output_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["state_dict"]["turn"].shape == (3,)
    assert set(result["models"]) == {"student", "teacher_1", "teacher_2"}
    assert result["selection_model"] == "student"
