"""The one EMA update of the teacher-student methods: mean teacher's form (weights averaged,
batch-norm statistics copied) and BCP's / AD-MT's (the whole floating-point state averaged)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from segssl.methods.ema import ema_update


def pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    student = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    teacher = copy.deepcopy(student)
    for module in (student, teacher):  # different weights and running statistics
        with torch.no_grad():
            for p in module.parameters():
                p.normal_()
        module.train()(torch.randn(2, 1, 8, 8))
    return teacher, student


def test_mean_teacher_form_averages_weights_and_copies_buffers() -> None:
    """What ``MeanTeacher`` did in its own loop before it used the shared helper, exactly."""
    teacher, student = pair()
    expected = copy.deepcopy(teacher)
    with torch.no_grad():
        for t, s in zip(expected.parameters(), student.parameters(), strict=True):
            t.mul_(0.9).add_(s.detach(), alpha=0.1)
        for t, s in zip(expected.buffers(), student.buffers(), strict=True):
            t.copy_(s)
    ema_update(teacher, student, 0.9, average_buffers=False)
    for (name, got), want in zip(
        teacher.state_dict().items(), expected.state_dict().values(), strict=True
    ):
        assert torch.equal(got, want), name


def test_default_form_averages_batch_norm_statistics_too() -> None:
    teacher, student = pair()
    before = copy.deepcopy(teacher.state_dict())
    ema_update(teacher, student, 0.9)
    state, source = teacher.state_dict(), student.state_dict()
    for name in ("0.weight", "1.running_mean", "1.running_var"):
        assert torch.allclose(state[name], 0.9 * before[name] + 0.1 * source[name]), name
    assert torch.equal(state["1.num_batches_tracked"], source["1.num_batches_tracked"])
