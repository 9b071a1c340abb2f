"""Bidirectional copy-paste (BCP; Bai et al., CVPR 2023), after the official
``DeepMed-Lab-ECNU/BCP/code/ACDC_BCP_train.py``.

One run holds both stages. Mask M: ones with a zero box of 2/3 H x 2/3 W at a random position,
one per step. Labeled batch halves la, lb (labels ya, yb), unlabeled halves ua, ub.

- Stage 1 (steps < ``pretrain_steps``, labeled only): ``x = la M + lb (1 - M)``, loss
  ``(Dice + CE) / 2`` with Dice and CE each computed on the two regions separately and summed.
- Stage 2: an EMA teacher (decay 0.99 from the first step, on all state including BN
  statistics) gives pseudo-labels ``argmax`` then the largest connected component per class;
  ``x_u = ua M + la (1 - M)``, ``x_l = lb M + ub (1 - M)``; the same region-wise Dice + CE with
  pseudo-labelled regions weighted ``u_weight`` (0.5); loss ``(Dice_u + Dice_l + CE_u + CE_l) / 2``.

Where code and paper differ, or segssl differs from the code, this follows the code:
- Pre-training length: the paper and the code since July 2023 (commit b62b10b: ``pre_iterations``
  = 10k) pre-train 10k steps then self-train 30k; earlier code pre-trained ``max_iterations``
  (30k). The default ``pretrain_steps=0.25`` is a fraction of ``trainer.max_steps``: 10k of 40k,
  and still both stages in a short run. An integer is a number of steps.
- Stage 2 starts from the stage-1 weights with the best validation Dice (the code reloads its best
  pre-training checkpoint; ``stage2_init=best``), or from the last ones (``last``, or when no
  validation ran in stage 1). The optimiser's momentum is carried over, not reloaded.
- Constant learning rate (the code never changes it): ``poly_power: 0`` in conf/method/bcp.yaml.
- The teacher predicts in train mode (dropout and batch statistics on), as the code does: Lightning
  keeps every submodule in train mode during a training step. It sees each unlabeled half in a
  separate call, and the student each mixed batch in a separate call, as in the code.
- Dice of SSL4MIS's form (``region_losses.soft_dice_loss``, smooth 1e-10 as BCP's code).
- Unequal batch halves are refused (the code assumes equal ones).

DSAIF views: the student's inputs (stage 1 and both mixed batches) are built from ``image_1``;
the teacher's pseudo-labels come from ``image_2`` of the unlabeled images (as segssl's mean
teacher). With ``filter=none`` both are the same image: the published method.

Resume and DDP: the stage is a function of ``global_step`` and of ``pretrain_steps`` resolved once
into a checkpointed buffer; the teacher is copied at the start of step ``pretrain_steps``
(``on_train_batch_start``) from state every rank holds identically (validation metrics are
gathered over ranks), and teacher weights are in every checkpoint.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from segssl.methods.base import SegmentationMethod, softmax_of
from segssl.methods.ema import ema_update
from segssl.methods.mixing import copy_paste_mask, largest_component, paste
from segssl.methods.region_losses import region_cross_entropy, soft_dice_loss
from segssl.methods.steps import resolve_steps

log = logging.getLogger(__name__)


class BidirectionalCopyPaste(SegmentationMethod):
    network_names = ("student", "teacher")
    trained_networks = ("student",)  # the teacher follows by EMA, without gradients
    uses_unlabeled = True
    # the official code evaluates (and selects) the student only
    selection_model = "student"
    # the network stage 1 trains and the EMA teacher follows (ABD on BCP names its network 1)
    student_name = "student"
    config_name = "bcp"  # conf/method/<name>.yaml, for error messages

    def __init__(
        self,
        *args,
        pretrain_steps: float = 0.25,
        ema_decay: float = 0.99,
        u_weight: float = 0.5,
        stage2_init: str = "best",
        largest_component: bool = True,
        **kwargs,
    ) -> None:
        if stage2_init not in ("best", "last"):
            raise ValueError(f"method.stage2_init={stage2_init!r}: expected 'best' or 'last'")
        self.pretrain_steps, self.ema_decay, self.u_weight = pretrain_steps, ema_decay, u_weight
        self.stage2_init, self.use_largest_component = stage2_init, largest_component
        super().__init__(*args, **kwargs)
        for p in self.networks["teacher"].parameters():
            p.requires_grad_(False)
        # checkpointed: the resolved stage boundary (-1 until the first step) and the best
        # stage-1 validation Dice, whose weights the teacher holds during stage 1
        self.register_buffer("stage1_steps", torch.tensor(-1, dtype=torch.long))
        # (-1 until a stage-1 validation: Dice is >= 0, and a checkpoint may hold no Inf)
        self.register_buffer("stage1_best", torch.tensor(-1.0))
        # the boundary as a host int: reading the buffer (on the device) three times per step
        # would wait for the device each time; forgotten whenever a state dict is loaded
        self._boundary: int | None = None
        self.register_load_state_dict_post_hook(BidirectionalCopyPaste._forget_boundary)

    def predict_fns(self):
        """The code evaluates (and selects) the student only."""
        return {"student": softmax_of(lambda x: self.run_network("student", x))}

    # -- stages --------------------------------------------------------------------------------
    def boundary(self) -> int:
        """Steps of stage 1, resolved once and kept in checkpoints (a resume that extends
        ``trainer.max_steps`` does not move it). Read from the buffer once, then kept."""
        if self._boundary is None:
            stored = int(self.stage1_steps)
            if stored < 0:
                max_steps = int(self.trainer.max_steps)
                stored = resolve_steps(self.pretrain_steps, max_steps, "method.pretrain_steps")
                self.stage1_steps.fill_(stored)
            self._boundary = stored
        return self._boundary

    @staticmethod
    def _forget_boundary(module: nn.Module, incompatible_keys: Any) -> None:
        module._boundary = None

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        if self.global_step != self.boundary():
            return
        student, teacher = self.networks[self.student_name], self.networks["teacher"]
        if self.stage2_init == "best" and float(self.stage1_best) >= 0:
            student.load_state_dict(teacher.state_dict())
            log.info("BCP stage 2 from the best stage-1 weights (val Dice %.4f)", self.stage1_best)
        else:
            teacher.load_state_dict(student.state_dict())
            log.info("BCP stage 2 from the stage-1 weights at step %d", self.global_step)

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if self.stage2_init != "best" or self.trainer.sanity_checking:
            return
        if int(self.stage1_steps) < 0 or self.global_step > self.boundary():
            return
        dice = self.evaluation_results["val"]["models"][self.student_name]["mean"]["dice"]
        if dice > float(self.stage1_best):
            self.stage1_best.fill_(float(dice))
            student = self.networks[self.student_name]
            self.networks["teacher"].load_state_dict(student.state_dict())

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """EMA of the whole state (BN statistics too), as the code's ``update_model_ema``."""
        if self.global_step - 1 < self.boundary():
            return
        ema_update(self.networks["teacher"], self.networks[self.student_name], self.ema_decay)

    # -- losses --------------------------------------------------------------------------------
    def mix_loss(
        self,
        logits: torch.Tensor,
        outer: torch.Tensor,
        inner: torch.Tensor,
        mask: torch.Tensor,
        outer_weight: float,
        inner_weight: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(Dice, CE): ``outer`` labels the pixels where M = 1, ``inner`` the box (M = 0), each
        region's loss computed on its own pixels and weighted."""
        probs = torch.softmax(logits.float(), dim=1)
        dice = outer_weight * soft_dice_loss(probs, outer, mask, smooth=1e-10)
        dice = dice + inner_weight * soft_dice_loss(probs, inner, 1 - mask, smooth=1e-10)
        ce = outer_weight * region_cross_entropy(logits, outer, mask)
        ce = ce + inner_weight * region_cross_entropy(logits, inner, 1 - mask)
        return dice, ce

    def pseudo_label(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            labels = self.run_network("teacher", images).argmax(1)
        if self.use_largest_component:
            labels = largest_component(labels, self.num_classes)
        return labels

    def pretrain_losses(
        self,
        la: torch.Tensor,
        lb: torch.Tensor,
        ya: torch.Tensor,
        yb: torch.Tensor,
        mask: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Stage 1: the student learns ``la M + lb (1 - M)`` with each region's labels."""
        if la.shape[0] == 0:
            raise ValueError(f"method={self.config_name} needs at least 2 labeled images per step")
        student = self.student_name
        logits = self.run_network(student, paste(la, lb, mask))
        dice, ce = self.mix_loss(logits, ya, yb, mask, 1.0, 1.0)
        self.track_labeled(student, logits, paste(ya, yb, mask).long()[:, None])
        return {"loss": (dice + ce) / 2, "mix_dice": dice, "mix_ce": ce}

    def paired_unlabeled(self, batch: dict, n: int) -> dict:
        """The unlabeled half of the batch, refused unless it pairs with the ``n`` labeled
        images (as many, an even number): each mixed image takes one of each."""
        unlabeled = batch.get("unlabeled")
        if unlabeled is None or unlabeled["image_1"].shape[0] != n or n % 2:
            got = 0 if unlabeled is None else unlabeled["image_1"].shape[0]
            raise ValueError(
                f"method={self.config_name} pairs labeled and unlabeled halves: it needs as many "
                f"unlabeled as labeled images per step, an even number; got {n} labeled and "
                f"{got} unlabeled (set data.labeled_batch_size to half of data.batch_size, an "
                "even number)"
            )
        return unlabeled

    def training_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        labeled = batch["labeled"]
        images, labels = labeled["image_1"], labeled["label"][:, 0]
        if images.ndim != 4:
            raise ValueError(f"method=bcp is 2-D: got images of shape {tuple(images.shape)}")
        n = images.shape[0]
        half = n // 2
        mask = copy_paste_mask(*images.shape[-2:], device=images.device)
        la, lb, ya, yb = (
            images[:half],
            images[half : 2 * half],
            labels[:half],
            labels[half : 2 * half],
        )
        if self.global_step < self.boundary():
            return self.pretrain_losses(la, lb, ya, yb, mask)
        unlabeled = self.paired_unlabeled(batch, n)
        student_u, teacher_u = unlabeled["image_1"], unlabeled["image_2"]
        plab_a = self.pseudo_label(teacher_u[:half])
        plab_b = self.pseudo_label(teacher_u[half:])
        ua, ub = student_u[:half], student_u[half:]
        out_u = self.run_network("student", paste(ua, la, mask))
        out_l = self.run_network("student", paste(lb, ub, mask))
        dice_u, ce_u = self.mix_loss(out_u, plab_a, ya, mask, self.u_weight, 1.0)
        dice_l, ce_l = self.mix_loss(out_l, yb, plab_b, mask, 1.0, self.u_weight)
        dice, ce = dice_u + dice_l, ce_u + ce_l
        # train/dice_student on exactly the labeled pixels: la's box (out_u), lb's rest (out_l)
        labeled_logits = paste(out_l.detach(), out_u.detach(), mask)
        self.track_labeled("student", labeled_logits, paste(yb, ya, mask).long()[:, None])
        return {"loss": (dice + ce) / 2, "mix_dice": dice, "mix_ce": ce}
