"""Supervised baseline: one network, labeled data only."""

from __future__ import annotations

import torch

from segssl.methods.base import SegmentationMethod
from segssl.methods.losses import SupervisedLoss


class Supervised(SegmentationMethod):
    network_names = ("net",)
    uses_unlabeled = False
    selection_model = "net"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.supervised_loss = SupervisedLoss()

    def training_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        labeled = batch["labeled"]
        logits = self.run_network("net", labeled["image_1"])
        self.track_labeled("net", logits, labeled["label"])
        return {"loss": self.supervised_loss(logits, labeled["label"])}
