"""Exponential moving averages of a network, shared by the teacher-student methods (mean
teacher, BCP, ABD on BCP, AD-MT)."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def ema_update(
    teacher: nn.Module, student: nn.Module, decay: float, *, average_buffers: bool = True
) -> None:
    """``teacher <- decay * teacher + (1 - decay) * student`` over the whole state dict.

    With ``average_buffers`` (BCP's ``update_model_ema``, AD-MT's ``update_ema_variables``)
    floating-point buffers (batch-norm statistics) are averaged as the weights are; without it
    (SSL4MIS's mean teacher) only the weights are, and every buffer is copied from the student.
    Integer buffers (batch counts) are always copied."""
    source = student.state_dict()
    weights = None if average_buffers else {name for name, _ in teacher.named_parameters()}
    for name, tensor in teacher.state_dict().items():
        if tensor.is_floating_point() and (weights is None or name in weights):
            tensor.mul_(decay).add_(source[name], alpha=1.0 - decay)
        else:
            tensor.copy_(source[name])
