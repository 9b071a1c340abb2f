"""Cross pseudo supervision (Chen et al., CVPR 2021): two networks teach each other with hard
pseudo labels. DSAIF is this method fed with the Max-/Min-tree filtered views (``filter=dsaif``);
each network reads its own view ``image_1`` / ``image_2``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from segssl.methods.base import SegmentationMethod
from segssl.methods.losses import SupervisedLoss, sigmoid_rampup


class CrossPseudoSupervision(SegmentationMethod):
    network_names = ("net1", "net2")
    uses_unlabeled = True
    selection_model = "ensemble"
    rotates_view_2_back = True

    def __init__(
        self, *args, consistency: float = 0.1, rampup_steps: int = 30000, **kwargs
    ) -> None:
        self.consistency, self.rampup_steps = consistency, rampup_steps
        super().__init__(*args, **kwargs)
        self.supervised_loss = SupervisedLoss()

    def ensembles(self) -> dict[str, list[str]]:
        return {"ensemble": list(self.network_names)}

    def training_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        labeled, unlabeled = batch["labeled"], batch.get("unlabeled")
        n = labeled["image_1"].shape[0]
        view_1, view_2 = labeled["image_1"], labeled["image_2"]
        if unlabeled is not None:
            view_1 = torch.cat([view_1, unlabeled["image_1"]])
            view_2 = torch.cat([view_2, unlabeled["image_2"]])
        logits_1 = self.run_network("net1", view_1)
        # DSAIF-SEMI's 3-D views rotate net2's input (filter.rotate_view_2): undone here, before
        # the labels, the pseudo-labels of net1 and the metrics see net2's logits
        logits_2 = self.rotate_back_view_2(self.run_network("net2", view_2), labeled, unlabeled)
        sup_1 = self.supervised_loss(logits_1[:n], labeled["label"])
        sup_2 = self.supervised_loss(logits_2[:n], labeled["label"])
        losses = {"sup_1": sup_1, "sup_2": sup_2}
        self.track_labeled("net1", logits_1[:n], labeled["label"])
        self.track_labeled("net2", logits_2[:n], labeled["label"])
        loss = sup_1 + sup_2
        if unlabeled is not None:
            u1, u2 = logits_1[n:].float(), logits_2[n:].float()
            self.track_agreement(u1, u2)
            cps = F.cross_entropy(u1, u2.argmax(1).detach()) + F.cross_entropy(
                u2, u1.argmax(1).detach()
            )
            weight = self.consistency * sigmoid_rampup(self.global_step, self.rampup_steps)
            loss = loss + weight * cps
            losses["cps"] = cps
        losses["loss"] = loss
        return losses
