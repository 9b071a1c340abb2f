"""Adaptive bidirectional displacement (ABD; Chi et al., CVPR 2024), after the official
``chy-upc/ABD/code/train_ACDC_Cross_Teaching.py`` and ``code/utils/displacement.py``, with two
UNets.

Two networks; network 1 sees the weak view, network 2 a strong view (Cutout with 0/1 noise and
the label set to background in the box, p 0.5; brightness and contrast jitter 0.8). Images are
cut into a ``grid`` x ``grid`` (4 x 4) patch grid and patch confidence is the mean max-probability.

- Labeled (ABD-I): with probability 0.5 per image, each view's most confident patch is replaced
  by the other view's least confident one, labels alike; both networks learn the new images with
  ``(CE + Dice) / 2``, weight ``labeled_weight`` (2), dropped after ``labeled_until`` steps.
- Unlabeled (ABD-R): each view's least confident patch is replaced by one of the other view's
  ``top_k`` (4) most confident patches, the one of least KL divergence between mean-logit class
  distributions; both networks see both new batches.
- Cross pseudo supervision with Dice (hard labels of the other network) on the unlabeled images
  and on the ABD-R images, weight ``consistency`` (0.1) x sigmoid ramp-up.
- Total: sum over the networks of ``sup + 2 sup_ABD-I + w (cps + cps_ABD-R)``.

Variant: the repository has two ACDC scripts. This is the cross-teaching one with its Swin-UNet
(which needs downloaded ImageNet weights) replaced by a second UNet. The other,
``train_ACDC_BCP.py`` (ABD on BCP: two UNets, ABD-R only, no ABD-I), is ``abd_bcp``.

Where segssl differs from the code:
- Stage lengths are fractions of ``trainer.max_steps`` (the code: ABD-I until step 20000 of
  30000, ramp-up over iteration // 150 up to 200, i.e. the whole run); integers are steps.
- ABD-I forwards are skipped once their loss is dropped (the code still runs them; only the BN
  running statistics differ). Donor patches are read from the views before displacement (the
  code reads a half-displaced view; equal unless the most and least confident patch coincide).
- Strong augmentation runs on the batch on the device; Dice is SSL4MIS's form
  (``region_losses.soft_dice_loss``). The code evaluates each network; segssl evaluates both and
  their ensemble and selects on network 1 (the code's UNet).

DSAIF views: network 1 sees ``image_1``, network 2 the strong augmentation of ``image_2``
(``filter=none``: the same image, the published method). Three settings make the explanations of
how ABD fares with these views testable; the defaults are the behaviour above, and with
``filter=none`` (views equal to the raw ``image``) none of them changes anything, random draws
included. The first two read the batch's raw ``image``.

- ``displace_on`` (``views``): ``raw`` builds the ABD-R and ABD-I images from the raw image's
  weak/strong pair (the raw image, and its strong augmentation with the same Cutout box and jitter
  as network 2's view, labels alike), i.e. what ``filter=none`` would displace, instead of from
  the two views, whose patches come from different trees. Which patches move is still decided by
  each network's predictions on its own view; the supervised and CPS terms keep the views.
- ``views_on_labeled`` (``true``): ``false`` gives both networks the raw labeled image (network 2
  after its strong augmentation), the views then only on the unlabeled images.
- ``strong_on_filtered`` (``true``): ``false`` spares network 2's Cutout and jitter on the rows
  whose ``image_2`` the views changed (tree filter or their gamma; the label keeps no Cutout box
  there), so that its input is perturbed once; rows equal to the raw image keep the strong
  augmentation. The draws are made for every row as before.
"""

from __future__ import annotations

import torch

from segssl.methods.base import SegmentationMethod
from segssl.methods.batch_augment import cutout_jitter
from segssl.methods.losses import sigmoid_rampup
from segssl.methods.mixing import (
    check_grid,
    inverse_displacement,
    reliable_displacement,
)
from segssl.methods.region_losses import dice_ce_loss, soft_dice_loss
from segssl.methods.steps import resolve_steps

DISPLACE_ON = ("views", "raw")


class AdaptiveBidirectionalDisplacement(SegmentationMethod):
    network_names = ("net1", "net2")
    uses_unlabeled = True
    selection_model = "net1"

    def __init__(
        self,
        *args,
        grid: int = 4,
        top_k: int = 4,
        consistency: float = 0.1,
        rampup_steps: int = 30000,
        labeled_weight: float = 2.0,
        labeled_until: float = 2 / 3,
        labeled_p: float = 0.5,
        cutout_p: float = 0.5,
        jitter: float = 0.8,
        displace_on: str = "views",
        views_on_labeled: bool = True,
        strong_on_filtered: bool = True,
        **kwargs,
    ) -> None:
        if not 1 <= top_k <= grid * grid:
            raise ValueError(f"method.top_k={top_k}: expected 1..grid*grid ({grid * grid})")
        if displace_on not in DISPLACE_ON:
            raise ValueError(
                f"method.displace_on={displace_on!r}: expected 'views' (displace the networks' "
                "views) or 'raw' (displace the raw image's weak/strong pair)"
            )
        for key, value in (
            ("views_on_labeled", views_on_labeled),
            ("strong_on_filtered", strong_on_filtered),
        ):
            if not isinstance(value, bool):
                raise ValueError(f"method.{key}={value!r}: expected true or false")
        self.displace_on = displace_on
        self.views_on_labeled, self.strong_on_filtered = views_on_labeled, strong_on_filtered
        self.grid, self.top_k = grid, top_k
        self.consistency, self.rampup_steps = consistency, rampup_steps
        self.labeled_weight, self.labeled_until, self.labeled_p = (
            labeled_weight,
            labeled_until,
            labeled_p,
        )
        self.cutout_p, self.jitter = cutout_p, jitter
        super().__init__(*args, **kwargs)

    def ensembles(self) -> dict[str, list[str]]:
        return {"ensemble": ["net1", "net2"]}

    def strong_view(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """ABD's ``WeakStrongAugment`` strong branch: Cutout (label to background in the box)
        then brightness/contrast jitter. ``labels`` covers the first images of the batch."""
        return cutout_jitter(images, labels, self.cutout_p, self.jitter)

    def replayed_strong_view(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``strong_view`` with the random draws of the next ``strong_view`` call (same boxes,
        noise and jitter), leaving the random state as it was: the raw pair of
        ``displace_on=raw`` is augmented exactly as network 2's view."""
        device = images.device
        fork = (
            torch.random.fork_rng(devices=[])
            if device.type == "cpu"
            else torch.random.fork_rng(devices=[device], device_type=device.type)
        )
        with fork:
            return self.strong_view(images, labels)

    def inputs(
        self, labeled: dict, unlabeled: dict, label_1: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        """Network 1's and network 2's images (labeled then unlabeled), network 2's labels, and
        the images (with network 2's labels) that ABD-R and ABD-I displace patches between."""
        n = label_1.shape[0]
        needs_raw = (
            self.displace_on == "raw" or not self.views_on_labeled or not self.strong_on_filtered
        )
        raw = raw_images(labeled, unlabeled) if needs_raw else None
        first_1, first_2 = labeled["image_1"], labeled["image_2"]
        if not self.views_on_labeled:
            first_1 = first_2 = raw[:n]
        view_1 = torch.cat([first_1, unlabeled["image_1"]])
        image_2 = torch.cat([first_2, unlabeled["image_2"]])
        if self.displace_on == "raw":
            raw_2, raw_label_2 = self.replayed_strong_view(raw, label_1)
        view_2, label_2 = self.strong_view(image_2, label_1)
        if not self.strong_on_filtered:
            filtered = (image_2 != raw).flatten(1).any(1)
            view_2 = torch.where(filtered.view(-1, 1, 1, 1), image_2, view_2)
            label_2 = torch.where(filtered[:n, None, None], label_1, label_2)
        if self.displace_on == "raw":
            return view_1, view_2, label_2, (raw, raw_2, raw_label_2)
        return view_1, view_2, label_2, (view_1, view_2, label_2)

    def training_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        labeled, unlabeled = batch["labeled"], batch.get("unlabeled")
        if unlabeled is None:
            raise ValueError("method=abd needs unlabeled data (data.use_unlabeled=true)")
        n = labeled["image_1"].shape[0]
        if labeled["image_1"].ndim != 4:
            raise ValueError(f"method=abd is 2-D: got images of {tuple(labeled['image_1'].shape)}")
        check_grid(*labeled["image_1"].shape[-2:], self.grid)
        label_1 = labeled["label"][:, 0]
        view_1, view_2, label_2, (pair_1, pair_2, pair_label_2) = self.inputs(
            labeled, unlabeled, label_1
        )
        logits_1 = self.run_network("net1", view_1)
        logits_2 = self.run_network("net2", view_2)
        probs_1, probs_2 = torch.softmax(logits_1.float(), 1), torch.softmax(logits_2.float(), 1)
        conf_1, hard_1 = probs_1.detach().max(1)
        conf_2, hard_2 = probs_2.detach().max(1)

        sup_1 = dice_ce_loss(logits_1[:n], label_1)
        sup_2 = dice_ce_loss(logits_2[:n], label_2)
        self.track_labeled("net1", logits_1[:n], label_1[:, None])
        self.track_labeled("net2", logits_2[:n], label_2[:, None])
        cps = soft_dice_loss(probs_1[n:], hard_2[n:]) + soft_dice_loss(probs_2[n:], hard_1[n:])

        # ABD-R on the unlabeled images: both networks see both displaced batches
        new_1, new_2, _ = reliable_displacement(
            pair_1[n:, 0], pair_2[n:, 0], conf_1[n:], conf_2[n:],
            logits_1[n:].detach(), logits_2[n:].detach(), self.grid, self.top_k,
        )  # fmt: skip
        displaced = torch.cat([new_1, new_2])[:, None]
        out_1 = torch.softmax(self.run_network("net1", displaced).float(), 1)
        out_2 = torch.softmax(self.run_network("net2", displaced).float(), 1)
        cps_r = soft_dice_loss(out_1, out_2.detach().argmax(1)) + soft_dice_loss(
            out_2, out_1.detach().argmax(1)
        )
        weight = self.consistency * sigmoid_rampup(self.global_step, self.rampup_steps)
        loss = sup_1 + sup_2 + weight * (cps + cps_r)
        losses = {"sup_1": sup_1, "sup_2": sup_2, "cps": cps, "cps_displaced": cps_r}

        # ABD-I on the labeled images, until labeled_until
        until = resolve_steps(
            self.labeled_until, int(self.trainer.max_steps), "method.labeled_until"
        )
        if self.global_step <= until:
            img_1, img_2, lab_1, lab_2 = inverse_displacement(
                pair_1[:n, 0], pair_2[:n, 0], label_1, pair_label_2, conf_1[:n], conf_2[:n],
                self.grid, self.labeled_p,
            )  # fmt: skip
            images, labels = torch.cat([img_1, img_2])[:, None], torch.cat([lab_1, lab_2])
            sup_i = dice_ce_loss(self.run_network("net1", images), labels) + dice_ce_loss(
                self.run_network("net2", images), labels
            )
            loss = loss + self.labeled_weight * sup_i
            losses["sup_displaced"] = sup_i
        losses["loss"] = loss
        return losses


def raw_images(labeled: dict, unlabeled: dict) -> torch.Tensor:
    """The raw ``image`` of the labeled then unlabeled batch, in the views' dtype."""
    if "image" not in labeled or "image" not in unlabeled:
        raise ValueError(
            "method.displace_on=raw, method.views_on_labeled=false and "
            "method.strong_on_filtered=false read the raw image, and this batch has no 'image'"
        )
    like = labeled["image_1"]
    return torch.cat([labeled["image"], unlabeled["image"]]).to(like.dtype)
