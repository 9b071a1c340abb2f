"""UniMatch (Yang et al., CVPR 2023) for medical images, after the official
``LiheYoung/UniMatch/more-scenarios/medical/unimatch.py`` and ``dataset/acdc.py``.

One network. The weak view of an unlabeled image gives pseudo-labels (argmax), kept where the
max-probability is at least ``conf_thresh`` (0.95). Two strong views each get intensity jitter
(brightness and contrast in [0.5, 1.5], p 0.8: ``ColorJitter(0.5, 0.5, 0.5, 0.25)`` on a grey
image), Gaussian blur (sigma in [0.1, 2], p 0.5) and CutMix (p 0.5) with another unlabeled image,
whose pseudo-labels come from the network in eval mode. The encoder features of the labeled and
weak images are decoded twice, clean and through Dropout2d(0.5) (feature perturbation).
Loss ``(L_x + 0.25 L_s1 + 0.25 L_s2 + 0.5 L_fp) / 2``, ``L_x = (CE + Dice) / 2``, the unlabeled
terms Dice only, over confident pixels.

Where segssl differs from the code:
- The CutMix partner batch is the unlabeled batch rolled by one image (the code draws a second
  unlabeled batch from another loader); its eval-mode prediction is taken on that batch.
- Strong augmentations run on the batch tensors on the device (``batch_augment``), without the
  code's 8-bit quantisation of the images; blur is an exact Gaussian (PIL approximates it).
- The code trains for 300 epochs of the unlabeled set; segssl counts ``trainer.max_steps``.
- The code selects its best epoch on validation and test together (``valtest.txt``); segssl
  selects on validation only.
- Dice is the code's form (``region_losses.soft_dice_loss``, smooth 1e-5).

DSAIF views: the pseudo-labels come from the unfiltered ``image``, the two strong views start from
``image_1`` and ``image_2``, the labeled loss is on ``image_1`` (``filter=none``: all the same
image, the published method).

The network must expose its encoder features: ``model=unet_ssl4mis`` (the published network) or
``model=unet2d`` (MONAI's BasicUNet); any other model is refused at construction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from segssl.methods.base import SegmentationMethod
from segssl.methods.batch_augment import brightness_contrast, gaussian_blur
from segssl.methods.mixing import random_boxes
from segssl.methods.region_losses import dice_ce_loss, soft_dice_loss
from segssl.models.unet import encoder_decoder


class UniMatch(SegmentationMethod):
    network_names = ("net",)
    uses_unlabeled = True
    selection_model = "net"

    def __init__(
        self,
        *args,
        conf_thresh: float = 0.95,
        weights: tuple[float, float, float] = (0.25, 0.25, 0.5),
        fp_dropout: float = 0.5,
        jitter: float = 0.5,
        jitter_p: float = 0.8,
        blur_p: float = 0.5,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        cutmix_p: float = 0.5,
        **kwargs,
    ) -> None:
        self.conf_thresh, self.weights, self.fp_dropout = conf_thresh, tuple(weights), fp_dropout
        self.jitter, self.jitter_p = jitter, jitter_p
        self.blur_p, self.blur_sigma, self.cutmix_p = blur_p, tuple(blur_sigma), cutmix_p
        if len(self.weights) != 3:
            raise ValueError(f"method.weights={list(weights)}: expected [w_s1, w_s2, w_fp]")
        super().__init__(*args, **kwargs)
        try:
            encoder_decoder(self.networks["net"])
        except ValueError as error:
            target = self.hparams.model.get("_target_")
            raise ValueError(f"method=unimatch with model._target_={target}: {error}") from None

    def strong(self, images: torch.Tensor) -> torch.Tensor:
        images = brightness_contrast(images, self.jitter, self.jitter, p=self.jitter_p)
        return gaussian_blur(images, p=self.blur_p, sigma=self.blur_sigma)

    def training_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        labeled, unlabeled = batch["labeled"], batch.get("unlabeled")
        if unlabeled is None:
            raise ValueError("method=unimatch needs unlabeled data (data.use_unlabeled=true)")
        net = self.networks["net"]
        encode, decode = encoder_decoder(net)
        x, y = labeled["image_1"], labeled["label"][:, 0]
        weak = unlabeled["image"]
        n_l, n_u = x.shape[0], weak.shape[0]

        # CutMix partner: the next image of the unlabeled batch, labelled in eval mode
        with torch.no_grad():
            net.eval()
            mix_probs = torch.softmax(self.run_network("net", weak).float(), 1).roll(1, 0)
            net.train()
        conf_mix, label_mix = mix_probs.max(1)
        strong_1, strong_2 = self.strong(unlabeled["image_1"]), self.strong(unlabeled["image_2"])
        boxes_1, boxes_2 = (
            random_boxes(n_u, *weak.shape[-2:], p=self.cutmix_p, device=weak.device)
            for _ in range(2)
        )
        strong_1 = torch.where(boxes_1[:, None] > 0, strong_1.roll(1, 0), strong_1)
        strong_2 = torch.where(boxes_2[:, None] > 0, strong_2.roll(1, 0), strong_2)

        # clean and feature-perturbed decoding of labeled + weak images
        features = encode(torch.cat([x, weak]))
        perturbed = [
            torch.cat([f, F.dropout2d(f, self.fp_dropout, training=True)]) for f in features
        ]
        clean, noisy = decode(perturbed).chunk(2)
        pred_x, pred_w = clean.split([n_l, n_u])
        pred_fp = noisy[n_l:]
        pred_s1, pred_s2 = self.run_network("net", torch.cat([strong_1, strong_2])).chunk(2)

        conf_w, label_w = torch.softmax(pred_w.detach().float(), 1).max(1)
        label_1 = torch.where(boxes_1 > 0, label_mix, label_w)
        conf_1 = torch.where(boxes_1 > 0, conf_mix, conf_w)
        label_2 = torch.where(boxes_2 > 0, label_mix, label_w)
        conf_2 = torch.where(boxes_2 > 0, conf_mix, conf_w)

        def unlabeled_dice(logits: torch.Tensor, target: torch.Tensor, conf: torch.Tensor):
            probs = torch.softmax(logits.float(), 1)
            return soft_dice_loss(probs, target, (conf >= self.conf_thresh).float())

        loss_x = dice_ce_loss(pred_x, y)
        self.track_labeled("net", pred_x, y[:, None])
        loss_s1 = unlabeled_dice(pred_s1, label_1, conf_1)
        loss_s2 = unlabeled_dice(pred_s2, label_2, conf_2)
        loss_fp = unlabeled_dice(pred_fp, label_w, conf_w)
        w1, w2, w_fp = self.weights
        loss = (loss_x + w1 * loss_s1 + w2 * loss_s2 + w_fp * loss_fp) / 2
        return {
            "loss": loss,
            "sup": loss_x,
            "strong_1": loss_s1,
            "strong_2": loss_s2,
            "feature_perturbation": loss_fp,
            "mask_ratio": (conf_w >= self.conf_thresh).float().mean(),
        }
