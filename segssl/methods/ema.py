"""Exponential moving averages of a network's whole state, shared by the teacher-student methods
(BCP, ABD on BCP, AD-MT)."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """``teacher <- decay * teacher + (1 - decay) * student`` over the whole state dict: weights
    and floating-point buffers (batch-norm statistics) alike, as BCP's ``update_model_ema`` and
    AD-MT's ``update_ema_variables``; integer buffers (batch counts) are copied."""
    source = student.state_dict()
    for name, tensor in teacher.state_dict().items():
        if tensor.is_floating_point():
            tensor.mul_(decay).add_(source[name], alpha=1.0 - decay)
        else:
            tensor.copy_(source[name])
