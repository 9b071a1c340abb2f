"""Dice and cross-entropy restricted to a region of the image, in the form the official BCP, ABD
and UniMatch code computes them: Dice of SSL4MIS's ``DiceLoss`` (squared terms in the
denominator, sums over the whole batch, mean over all classes with background), and
cross-entropy averaged over the region's pixels only.

``segssl.methods.losses.SupervisedLoss`` uses MONAI's Dice (per image, plain sums); these three
methods use the form of their own code so that ``filter=none`` reproduces it."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(
    probs: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    smooth: float = 1e-5,
) -> torch.Tensor:
    """``mean_c 1 - (2 sum p t w + s) / (sum p^2 w + sum t w + s)``.

    Args:
        probs: (B, C, H, W) class probabilities.
        target: (B, H, W) integer classes.
        weight: (B, H, W) or (H, W) pixel weights in {0, 1}; pixels of weight 0 are left out
            (BCP's region masks, UniMatch's confidence mask). None: every pixel.
        smooth: added to numerator and denominator (BCP 1e-10, SSL4MIS and UniMatch 1e-5).
    """
    probs = probs.float()
    # one-hot by comparison (F.one_hot reads the labels' range back on some devices)
    classes = torch.arange(probs.shape[1], device=target.device).view(1, -1, 1, 1)
    onehot = (target.long()[:, None] == classes).to(probs.dtype)
    w = torch.ones_like(probs[:, :1]) if weight is None else weight.to(probs).expand_as(target)
    w = w.reshape(target.shape[0], 1, *target.shape[1:])
    dims = (0, 2, 3)
    intersect = (probs * onehot * w).sum(dims)
    denominator = (probs * probs * w).sum(dims) + (onehot * w).sum(dims)
    return (1.0 - (2.0 * intersect + smooth) / (denominator + smooth)).mean()


def region_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy averaged over the pixels of weight 1 (all pixels when ``weight`` is None)."""
    ce = F.cross_entropy(logits.float(), target.long(), reduction="none")
    if weight is None:
        return ce.mean()
    weight = weight.to(ce).expand_as(ce)
    return (ce * weight).sum() / (weight.sum() + 1e-16)


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The official codes' supervised loss ``(CE + Dice) / 2`` on (B, H, W) labels."""
    probs = torch.softmax(logits.float(), dim=1)
    return 0.5 * (region_cross_entropy(logits, target) + soft_dice_loss(probs, target))
