"""Loss pieces shared by the methods."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn


class SupervisedLoss(nn.Module):
    """SSL4MIS's supervised loss: ``0.5 * (CE + Dice)``, Dice over all classes on softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.dice = DiceLoss(include_background=True, to_onehot_y=True, softmax=True)

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """``label`` is (B, 1, *spatial) integer classes."""
        logits = logits.float()
        return 0.5 * (F.cross_entropy(logits, label[:, 0]) + self.dice(logits, label))


def sigmoid_rampup(step: int, rampup_steps: int) -> float:
    """Laine & Aila's ramp-up ``exp(-5 (1 - t)^2)``, t = step / rampup_steps clipped to [0, 1]."""
    if rampup_steps <= 0:
        return 1.0
    t = min(max(step / rampup_steps, 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)
