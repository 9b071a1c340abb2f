"""Stand-in networks for method tests."""

from __future__ import annotations

import torch
from torch import nn


class Recorder(nn.Module):
    """A fake network: fixed logits (times one trained scale), and a record of every input and
    of the train/eval mode it was called in."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits, self.inputs, self.modes = logits, [], []
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.clone())
        self.modes.append(self.training)
        return self.logits[: x.shape[0]] * self.scale
