"""Mean teacher (Tarvainen & Valpola, NeurIPS 2017), as SSL4MIS trains it: the teacher is an
exponential moving average of the student and sees the unlabeled input with a little noise; the
student is pulled towards the teacher's softmax on unlabeled data (MSE), with a ramp-up."""

from __future__ import annotations

from typing import Any

import torch

from segssl.methods.base import SegmentationMethod
from segssl.methods.ema import ema_update
from segssl.methods.losses import SupervisedLoss, sigmoid_rampup


class MeanTeacher(SegmentationMethod):
    network_names = ("student", "teacher")
    trained_networks = ("student",)  # the teacher follows by EMA, without gradients
    uses_unlabeled = True
    # SSL4MIS evaluates (and selects) the student
    selection_model = "student"

    def __init__(
        self,
        *args,
        consistency: float = 0.1,
        rampup_steps: int = 30000,
        ema_decay: float = 0.99,
        noise_std: float = 0.1,
        noise_clip: float = 0.2,
        **kwargs,
    ) -> None:
        self.consistency, self.rampup_steps, self.ema_decay = consistency, rampup_steps, ema_decay
        self.noise_std, self.noise_clip = noise_std, noise_clip
        super().__init__(*args, **kwargs)
        teacher = self.networks["teacher"]
        teacher.load_state_dict(self.networks["student"].state_dict())
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.supervised_loss = SupervisedLoss()

    def training_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        labeled, unlabeled = batch["labeled"], batch.get("unlabeled")
        n = labeled["image_1"].shape[0]
        inputs = labeled["image_1"]
        if unlabeled is not None:
            inputs = torch.cat([inputs, unlabeled["image_1"]])
        logits = self.run_network("student", inputs)
        loss = self.supervised_loss(logits[:n], labeled["label"])
        losses = {"sup": loss}
        self.track_labeled("student", logits[:n], labeled["label"])
        if unlabeled is not None:
            teacher_input = unlabeled["image_2"]
            noise = torch.randn_like(teacher_input) * self.noise_std
            teacher_input = teacher_input + noise.clamp(-self.noise_clip, self.noise_clip)
            with torch.no_grad():
                target = torch.softmax(self.run_network("teacher", teacher_input).float(), dim=1)
            self.track_agreement(logits[n:], target)
            consistency = torch.mean((torch.softmax(logits[n:].float(), dim=1) - target) ** 2)
            weight = self.consistency * sigmoid_rampup(self.global_step, self.rampup_steps)
            loss = loss + weight * consistency
            losses["consistency"] = consistency
        losses["loss"] = loss
        return losses

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """EMA update; the decay ramps from 0 so early teachers are not stuck at the init."""
        decay = min(1.0 - 1.0 / (self.global_step + 1), self.ema_decay)
        teacher, student = self.networks["teacher"], self.networks["student"]
        ema_update(teacher, student, decay, average_buffers=False)  # SSL4MIS copies BN stats
