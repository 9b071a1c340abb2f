"""ABD on BCP (Chi et al., CVPR 2024), after the official ``chy-upc/ABD/code/train_ACDC_BCP.py``
and ``code/utils/displacement.py`` (``ABD_R_BCP``): the recipe behind ABD's published ACDC
numbers, 88.96 / 89.81 Dice at 3 / 7 labeled patients (the paper's "ABD (BCP)" rows).

Stage 1 is BCP's copy-paste pre-training of network 1 alone (``BidirectionalCopyPaste``'s, run on
``net1``). Stage 2: networks 1 and 2 both start from the stage-1 weights, and an EMA teacher of
network 1 (decay 0.99, whole state) gives pseudo-labels (argmax, largest connected component per
class). Network 1 sees weak images, network 2 strong ones (ABD's Cutout with 0/1 noise and
background label in the box, p 0.5, then brightness/contrast jitter 0.8). With one mask M per
step, as BCP:

- each network learns BCP's two mixed batches of its own view, ``x_u = ua M + la (1 - M)`` and
  ``x_l = lb M + ub (1 - M)``, pseudo-labelled regions weighted ``u_weight`` (0.5); the teacher
  labels each network's unlabeled halves from that network's view (weak or strong);
- cross pseudo supervision (Dice against the other network's argmax) on the mixed batches;
- ABD-R on the mixed batches: each view's least confident patch (4 x 4 grid, mean
  max-probability) is replaced by a patch of the other view, per image with probability 0.5 the
  KL-closest of its 4 most confident patches, otherwise its single most confident one; both
  networks see both displaced batches, with cross pseudo supervision (Dice) again.
- Total ``sum_k (Dice_k + CE_k) / 2 + cps_weight (cps + cps_displaced)``; no ABD-I.

Where the code and the paper differ, this follows the code:
- The code computes a ramped consistency weight (``5 x 0.1 x`` sigmoid ramp-up) and never uses
  it: the cross pseudo supervision terms enter with weight 1 from the first self-training step
  (``cps_weight: 1.0``).
- ABD-R picks its donor by KL only for half of the images (``guided_p`` 0.5); the other half
  take the most confident patch.
- There is no ABD-I (the labeled displacement) and no separate supervised term: the labels enter
  only through BCP's mixed batches.

Where segssl differs from the code:
- One run holds both stages (``pretrain_steps``: 0.25 of ``trainer.max_steps``, the code's 10k
  of 10k + 30k); stage 2 starts from the best stage-1 weights on validation (``stage2_init``)
  as the code reloads its best pre-training checkpoint for all three networks. Network 1 keeps
  its optimiser momentum and network 2 starts with a copy of it (the code reloads the
  pre-training optimiser state into both). Constant learning rate 0.01, as the code.
- Checkpoints are selected on network 1's validation Dice over the whole run, stage 1 included
  (the code picks network 1's best self-training checkpoint; its test script reads network 1).
  Networks 1, 2 and their ensemble are evaluated; the teacher is not.
- Strong augmentation runs on the batch on the device; the per-image coin of ABD-R is torch's.
  Donor patches are read before displacement (see ``segssl.methods.abd``).

DSAIF views: network 1's batches (stage 1 too) are built from ``image_1``, network 2's from the
strong augmentation of ``image_2``; the teacher labels each from the view it is mixed into.
``filter=none``: the same image, the published method. 2-D only; both networks share one
architecture (``model_2`` is refused: network 2 starts from network 1's weights).
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import torch

from segssl.methods.base import softmax_of
from segssl.methods.batch_augment import cutout_jitter
from segssl.methods.bcp import BidirectionalCopyPaste
from segssl.methods.mixing import (
    check_grid,
    copy_paste_mask,
    mixed_reliable_displacement,
    paste,
)
from segssl.methods.region_losses import soft_dice_loss

log = logging.getLogger(__name__)


class AdaptiveBidirectionalDisplacementBCP(BidirectionalCopyPaste):
    network_names = ("net1", "net2", "teacher")
    student_name = "net1"
    selection_model = "net1"
    config_name = "abd_bcp"
    # networks 1 and 2 get gradients; the teacher follows by EMA
    trained_networks = ("net1", "net2")

    def __init__(
        self,
        *args,
        grid: int = 4,
        top_k: int = 4,
        guided_p: float = 0.5,
        cps_weight: float = 1.0,
        cutout_p: float = 0.5,
        jitter: float = 0.8,
        **kwargs,
    ) -> None:
        if not 1 <= top_k <= grid * grid:
            raise ValueError(f"method.top_k={top_k}: expected 1..grid*grid ({grid * grid})")
        if kwargs.get("model_2") is not None:
            raise ValueError(
                "method=abd_bcp with method.model_2 set: network 2 starts from network 1's "
                "stage-1 weights, so both must be the same architecture (drop model_2)"
            )
        self.grid, self.top_k, self.guided_p = grid, top_k, guided_p
        self.cps_weight, self.cutout_p, self.jitter = cps_weight, cutout_p, jitter
        super().__init__(*args, **kwargs)

    def predict_fns(self):
        """Networks 1 and 2 (the code validates both); the teacher is not evaluated."""
        return {n: softmax_of(partial(self.run_network, n)) for n in ("net1", "net2")}

    def ensembles(self) -> dict[str, list[str]]:
        return {"ensemble": ["net1", "net2"]}

    # -- stage switch --------------------------------------------------------------------------
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """BCP's switch for network 1 and the teacher, then network 2 <- network 1, weights and
        optimiser momentum (the code loads the same pre-training checkpoint into both)."""
        super().on_train_batch_start(batch, batch_idx)
        if self.global_step != self.boundary():
            return
        net1, net2 = self.networks["net1"], self.networks["net2"]
        net2.load_state_dict(net1.state_dict())
        trainer = getattr(self, "_trainer", None)
        for optimizer in getattr(trainer, "optimizers", None) or []:
            for p1, p2 in zip(net1.parameters(), net2.parameters(), strict=True):
                if p1 in optimizer.state:
                    optimizer.state[p2] = {
                        k: v.clone() if torch.is_tensor(v) else v
                        for k, v in optimizer.state[p1].items()
                    }
        log.info("ABD-BCP stage 2: network 2 starts from network 1 at step %d", self.global_step)

    # -- losses --------------------------------------------------------------------------------
    def training_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        labeled = batch["labeled"]
        images, labels = labeled["image_1"], labeled["label"][:, 0]
        if images.ndim != 4:
            raise ValueError(f"method=abd_bcp is 2-D: got images of shape {tuple(images.shape)}")
        n, half = images.shape[0], images.shape[0] // 2
        mask = copy_paste_mask(*images.shape[-2:], device=images.device)
        if self.global_step < self.boundary():
            losses = self.pretrain_losses(
                images[:half], images[half : 2 * half], labels[:half], labels[half : 2 * half], mask
            )
            # network 2 waits for stage 2; a zero term keeps its parameters in the graph, as DDP
            # requires of every trained parameter (its weights and momentum are replaced at the
            # switch, so the weight decay it gets meanwhile is lost)
            unused = sum(p.sum() for p in self.networks["net2"].parameters())
            losses["loss"] = losses["loss"] + 0.0 * unused
            return losses
        check_grid(*images.shape[-2:], self.grid)
        unlabeled = self.paired_unlabeled(batch, n)
        # the two views: weak (network 1) and strong (network 2), labels of each
        both = torch.cat([labeled["image_2"], unlabeled["image_2"]])
        strong, strong_labels = cutout_jitter(both, labels, self.cutout_p, self.jitter)
        views = {
            "net1": (images, unlabeled["image_1"], labels),
            "net2": (strong[:n], strong[n:], strong_labels),
        }
        inputs, outputs, losses = {}, {}, {}
        for name, (lab, unl, y) in views.items():
            ya, yb = y[:half], y[half:]
            plab_a, plab_b = self.pseudo_label(unl[:half]), self.pseudo_label(unl[half:])
            x_u, x_l = paste(unl[:half], lab[:half], mask), paste(lab[half:], unl[half:], mask)
            out_u, out_l = self.run_network(name, x_u), self.run_network(name, x_l)
            dice_u, ce_u = self.mix_loss(out_u, plab_a, ya, mask, self.u_weight, 1.0)
            dice_l, ce_l = self.mix_loss(out_l, yb, plab_b, mask, 1.0, self.u_weight)
            losses[f"mix_{name}"] = (dice_u + dice_l + ce_u + ce_l) / 2
            # train/dice_<net> on exactly the labeled pixels: la's box (x_u), lb's rest (x_l)
            labeled_logits = paste(out_l.detach(), out_u.detach(), mask)
            self.track_labeled(name, labeled_logits, paste(yb, ya, mask).long()[:, None])
            inputs[name], outputs[name] = torch.cat([x_u, x_l]), torch.cat([out_u, out_l])

        probs_1 = torch.softmax(outputs["net1"].float(), 1)
        probs_2 = torch.softmax(outputs["net2"].float(), 1)
        conf_1, hard_1 = probs_1.detach().max(1)
        conf_2, hard_2 = probs_2.detach().max(1)
        cps = soft_dice_loss(probs_1, hard_2) + soft_dice_loss(probs_2, hard_1)

        # ABD-R on the mixed batches; both networks see both displaced batches
        new_1, new_2, _ = mixed_reliable_displacement(
            inputs["net1"][:, 0], inputs["net2"][:, 0], conf_1, conf_2,
            outputs["net1"].detach(), outputs["net2"].detach(),
            self.grid, self.top_k, self.guided_p,
        )  # fmt: skip
        displaced = torch.cat([new_1, new_2])[:, None]
        out_1 = torch.softmax(self.run_network("net1", displaced).float(), 1)
        out_2 = torch.softmax(self.run_network("net2", displaced).float(), 1)
        cps_r = soft_dice_loss(out_1, out_2.detach().argmax(1)) + soft_dice_loss(
            out_2, out_1.detach().argmax(1)
        )
        self.track_agreement(out_1, out_2)
        loss = losses["mix_net1"] + losses["mix_net2"] + self.cps_weight * (cps + cps_r)
        return {"loss": loss, **losses, "cps": cps, "cps_displaced": cps_r}
