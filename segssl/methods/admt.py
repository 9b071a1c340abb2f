"""Alternate diverse teaching (AD-MT; Zhao et al., ECCV 2024), after the official
``ZhenZHAO/AD-MT/code/train_post_2d_aut.py`` with ``cfgs/config_2d_aut.yml`` (ACDC; published
88.75 / 89.46 Dice at 3 / 7 labeled patients, its own logs 88.85 / 89.46).

One student and two EMA teachers that take turns (random periodic alternating, RPA): a flag says
which teacher is *active*; the active teacher is the one updated after the step and predicts in
train mode (dropout, batch statistics), the other in eval mode. After each step the flag's
counter advances; after a period drawn uniformly in 1..``period`` (50) steps the flag flips and a
new period is drawn. The two turns also differ in the student's unlabeled input: while teacher 1
is active it is the weak image's strong augmentation (colour jitter p 0.8, Gaussian blur p 0.2);
while teacher 2 is active it is a CutMix of the weak images (p ``cutmix_p``, 1.0), with the
pseudo-labels, confidences and conflict map mixed alike.

Pseudo-labels (conflict-combating, CCM): both teachers predict the weak unlabeled images; their
softmaxes are averaged with per-pixel weights ``exp(-H_k)`` (H: entropy in bits), normalised,
then sharpened with ``temperature`` (1: none); label = argmax, confidence = max. Where the two
teachers disagree and the student's own weak prediction (detached) disagrees with that label and
is more confident, the student's label and confidence replace it (``conflict_mode``
``pixel_confidence``). The student learns the strong/mixed input with Dice on the pixels of
confidence >= ``conf_thresh`` (0.95); with ``conflict_weight`` != 1 the teachers' conflict
pixels get their own Dice term with that weight (at 1, the code's setting, one term).

Loss: ``(CE + Dice) / 2`` on labeled images + ``consistency`` (2.0) x sigmoid ramp-up x the
unlabeled Dice. Teacher EMA: both weights and batch-norm statistics; the decay is 0 (a copy of
the student) for the first ``ema_warmup`` steps, then ``min(1 - 1 / (s - w + 1), ema_decay)`` in
units of half steps (``s`` = step // 2, ``w`` = ema_warmup // 2), as the code. The student is
evaluated and selected (the code's test reads its best student); both teachers are evaluated too.

Where the paper and the code differ, or segssl differs from the code:
- Phases are fractions of ``trainer.max_steps``: the code ramps the weight over ``iter // 150``
  up to 50 (7500 of 30000 steps: ``rampup_steps: 0.25``), as a 150-step staircase where segssl
  ramps smoothly; its EMA warm-up is 50 half steps (100 of 30000: ``ema_warmup: 0.003333``).
- The paper's consistent/conflict split of the unlabeled loss is off in the code
  (``alt_param_conflict_weight: 1.0``); ``conflict_weight`` restores it.
- The student's pseudo-label that can replace the teachers' comes from the un-mixed weak image
  even when the teachers' labels were CutMixed (the code's order, kept).
- Teachers start from their own random initialisation, as the code (the active one becomes a
  copy of the student at its first update); the flag starts on teacher 1 with a random period.
  ``random_period: false`` keeps every period at ``period`` steps (the code's non-random branch
  flips every step). The period draws use a generator seeded from the run seed and the step, so
  every DDP rank draws the same; the flag, counter and period are in checkpoints.
- Strong augmentation and CutMix run on the batch on the device (no 8-bit quantisation); the
  CutMix partner is a random permutation of the unlabeled batch, as the code.
- Poly learning rate over ``trainer.max_steps`` (the code sets it after each step: one step
  later). Its test-time checkpoint is the best student on validation, as here.

DSAIF views: teacher 1 predicts on ``image_1``, teacher 2 on ``image_2``; the student's inputs of
a step (labeled, weak and strong/mixed) come from the active teacher's view, so each teacher
averages a student trained on its own tree. ``filter=none``: one image, the published method.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from segssl.methods.base import SegmentationMethod
from segssl.methods.batch_augment import brightness_contrast, gaussian_blur
from segssl.methods.ema import ema_update
from segssl.methods.losses import sigmoid_rampup
from segssl.methods.mixing import beta_cutmix_boxes
from segssl.methods.region_losses import dice_ce_loss, soft_dice_loss
from segssl.methods.steps import resolve_steps

CONFLICT_MODES = ("pixel_confidence", "teacher", "student", "random")


def fuse_teachers(
    probs_1: torch.Tensor, probs_2: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """AD-MT's entropy-weighted ensemble of two teachers' softmaxes (B, C, H, W): weights
    ``exp(-H_k) / (exp(-H_1) + exp(-H_2))`` per pixel (H in bits), sharpened by
    ``1 / temperature``. Returns (confidence, label, conflict): the fused max-probability and
    argmax, and where the teachers' own argmaxes differ."""
    entropy_1 = -(probs_1 * torch.log2(probs_1 + 1e-10)).sum(1)
    entropy_2 = -(probs_2 * torch.log2(probs_2 + 1e-10)).sum(1)
    weight_1 = torch.exp(-entropy_1) / (torch.exp(-entropy_1) + torch.exp(-entropy_2))
    fused = weight_1[:, None] * probs_1 + (1.0 - weight_1[:, None]) * probs_2
    fused = fused.pow(1.0 / temperature)
    fused = fused / fused.sum(1, keepdim=True)
    confidence, label = fused.max(1)
    return confidence, label, probs_1.argmax(1) != probs_2.argmax(1)


def combat_conflicts(
    label: torch.Tensor,
    confidence: torch.Tensor,
    student_label: torch.Tensor,
    student_confidence: torch.Tensor,
    teacher_conflict: torch.Tensor,
    mode: str = "pixel_confidence",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the teachers disagree (``teacher_conflict``) and the student's label differs from
    theirs, ``pixel_confidence`` takes the student's label and confidence if it is more
    confident; ``student`` always takes it there, ``teacher`` never, ``random`` takes it on the
    whole batch with probability 0.5 (the code's ``get_compromise_pseudo_btw_tea_stu``)."""
    conflict = teacher_conflict & (label != student_label)
    if mode == "pixel_confidence":
        take = conflict & (student_confidence > confidence)
    elif mode == "student" or (mode == "random" and float(torch.rand(())) < 0.5):
        take = conflict
    elif mode in ("teacher", "random"):
        return label, confidence
    else:
        raise ValueError(f"method.conflict_mode={mode!r}: expected one of {CONFLICT_MODES}")
    new_label = torch.where(take, student_label, label)
    return new_label, torch.where(take, student_confidence, confidence)


class AlternateDiverseTeaching(SegmentationMethod):
    network_names = ("student", "teacher_1", "teacher_2")
    trained_networks = ("student",)  # the teachers follow by EMA, without gradients
    uses_unlabeled = True
    # the code's test script reads its best student on validation
    selection_model = "student"

    def __init__(
        self,
        *args,
        ema_decay: float = 0.99,
        ema_warmup: float = 100,
        consistency: float = 2.0,
        rampup_steps: float = 0.25,
        conf_thresh: float = 0.95,
        period: int = 50,
        random_period: bool = True,
        conflict_mode: str = "pixel_confidence",
        conflict_weight: float = 1.0,
        temperature: float = 1.0,
        cutmix_p: float = 1.0,
        jitter: float = 0.5,
        jitter_p: float = 0.8,
        blur_p: float = 0.2,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        **kwargs,
    ) -> None:
        if conflict_mode not in CONFLICT_MODES:
            raise ValueError(
                f"method.conflict_mode={conflict_mode!r}: expected one of {CONFLICT_MODES}"
            )
        if int(period) < 1:
            raise ValueError(f"method.period={period}: expected at least 1 step per turn")
        self.ema_decay, self.ema_warmup = ema_decay, ema_warmup
        self.consistency, self.rampup_steps, self.conf_thresh = (
            consistency,
            rampup_steps,
            conf_thresh,
        )
        self.period, self.random_period = int(period), random_period
        self.conflict_mode, self.conflict_weight = conflict_mode, conflict_weight
        self.temperature, self.cutmix_p = temperature, cutmix_p
        self.jitter, self.jitter_p = jitter, jitter_p
        self.blur_p, self.blur_sigma = blur_p, tuple(blur_sigma)
        super().__init__(*args, **kwargs)
        for name in ("teacher_1", "teacher_2"):
            for p in self.networks[name].parameters():
                p.requires_grad_(False)
        # the alternation (checkpointed): active teacher (1 or 2), steps of its turn so far, and
        # the length of this turn (0 until drawn); kept on the host between steps
        self.register_buffer("turn", torch.tensor([1, 0, 0], dtype=torch.long))
        self._turn: list[int] | None = None
        self.register_load_state_dict_post_hook(AlternateDiverseTeaching._forget_turn)

    # -- the alternation -----------------------------------------------------------------------
    @staticmethod
    def _forget_turn(module: nn.Module, incompatible_keys: Any) -> None:
        module._turn = None

    def _draw_period(self, step: int) -> int:
        if not self.random_period:
            return self.period
        generator = torch.Generator().manual_seed(torch.initial_seed() + step)
        return int(torch.randint(1, self.period + 1, (), generator=generator))

    def turn_state(self) -> list[int]:
        """[active teacher (1 or 2), steps of this turn so far, length of this turn]."""
        if self._turn is None:
            self._turn = [int(v) for v in self.turn.tolist()]
            if self._turn[2] == 0:
                self._turn[2] = self._draw_period(0)
                self._store_turn()
        return self._turn

    def _store_turn(self) -> None:
        # element fills: no host-to-device copy, so no wait for the device
        for i, value in enumerate(self._turn or []):
            self.turn[i] = value

    def active_teacher(self) -> int:
        return self.turn_state()[0]

    def advance_turn(self, step: int) -> None:
        """After the active teacher's update: count the step; at the end of the turn flip to the
        other teacher and draw the next turn's length (``AlternateUpdate.update``)."""
        state = self.turn_state()
        state[1] += 1
        if state[1] >= state[2]:
            state[:] = [3 - state[0], 0, self._draw_period(step + 1)]
        self._store_turn()

    def ema_momentum(self, step: int) -> float:
        """The code's decay at (0-based) ``step``: 0 during the warm-up, then
        ``min(1 - 1 / (s - w + 1), ema_decay)`` in half steps."""
        max_steps = int(self.trainer.max_steps)
        warm = resolve_steps(self.ema_warmup, max_steps, "method.ema_warmup") // 2
        half = step // 2
        if half < warm:
            return 0.0
        return min(1.0 - 1.0 / (half - warm + 1), self.ema_decay)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = self.global_step - 1  # the step just taken
        active = self.networks[f"teacher_{self.active_teacher()}"]
        ema_update(active, self.networks["student"], self.ema_momentum(step))
        self.advance_turn(step)

    # -- losses --------------------------------------------------------------------------------
    def strong(self, images: torch.Tensor) -> torch.Tensor:
        """AD-MT's ``func_strong_augs``: colour jitter (0.5, p 0.8), then Gaussian blur (p 0.2)."""
        images = brightness_contrast(images, self.jitter, self.jitter, p=self.jitter_p)
        return gaussian_blur(images, p=self.blur_p, sigma=self.blur_sigma)

    def teacher_predictions(self, unlabeled: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Both teachers' softmaxes on the weak unlabeled images (teacher k on ``image_k``); the
        active one in train mode, the other in eval mode, as the code."""
        active = self.active_teacher()
        probs = []
        with torch.no_grad():
            for k in (1, 2):
                teacher = self.networks[f"teacher_{k}"]
                training = teacher.training
                teacher.train(k == active)
                logits = self.run_network(f"teacher_{k}", unlabeled[f"image_{k}"])
                teacher.train(training)
                probs.append(torch.softmax(logits.float(), 1))
        return probs[0], probs[1]

    def training_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        labeled, unlabeled = batch["labeled"], batch.get("unlabeled")
        if unlabeled is None:
            raise ValueError("method=admt needs unlabeled data (data.use_unlabeled=true)")
        if labeled["image_1"].ndim != 4:
            raise ValueError(f"method=admt is 2-D: got images of {tuple(labeled['image_1'].shape)}")
        active = self.active_teacher()
        view = f"image_{active}"
        x, y, weak = labeled[view], labeled["label"][:, 0], unlabeled[view]
        n_l, n_u = x.shape[0], weak.shape[0]

        probs_1, probs_2 = self.teacher_predictions(unlabeled)
        self.track_agreement(probs_1, probs_2)
        conf, label, conflict = fuse_teachers(probs_1, probs_2, self.temperature)
        if active == 1:
            strong = self.strong(weak)
        elif float(torch.rand(())) < self.cutmix_p:
            boxes = beta_cutmix_boxes(n_u, *weak.shape[-2:], device=weak.device) > 0
            partner = torch.randperm(n_u, device=weak.device)
            strong = torch.where(boxes[:, None], weak[partner], weak)
            label = torch.where(boxes, label[partner], label)
            conf = torch.where(boxes, conf[partner], conf)
            conflict = torch.where(boxes, conflict[partner], conflict)
        else:
            strong = weak.clone()

        pred = self.run_network("student", torch.cat([x, weak, strong]))
        pred_x, pred_w, pred_s = pred.split([n_l, n_u, n_u])
        student_conf, student_label = torch.softmax(pred_w.detach().float(), 1).max(1)
        label, conf = combat_conflicts(
            label, conf, student_label, student_conf, conflict, self.conflict_mode
        )

        loss_x = dice_ce_loss(pred_x, y)
        self.track_labeled("student", pred_x, y[:, None])
        probs_s = torch.softmax(pred_s.float(), 1)
        confident = conf >= self.conf_thresh
        if self.conflict_weight == 1.0:
            loss_u = soft_dice_loss(probs_s, label, confident.float())
        else:
            consistent = soft_dice_loss(probs_s, label, (confident & ~conflict).float())
            conflicting = soft_dice_loss(probs_s, label, (confident & conflict).float())
            loss_u = consistent + self.conflict_weight * conflicting
        rampup = resolve_steps(
            self.rampup_steps, int(self.trainer.max_steps), "method.rampup_steps"
        )
        weight = self.consistency * sigmoid_rampup(self.global_step, rampup)
        return {
            "loss": loss_x + weight * loss_u,
            "sup": loss_x,
            "unsup": loss_u,
            "mask_ratio": confident.float().mean(),
            "conflict_ratio": conflict.float().mean(),
            "active_teacher": torch.full((), float(active), device=pred.device),
        }
