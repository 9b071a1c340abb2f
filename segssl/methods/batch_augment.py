"""Strong augmentations of UniMatch and ABD, done on the batch tensors on the training device
(the official code does them per sample with PIL / torchvision in the data loader).

Grey MR images: colour jitter reduces to brightness and contrast (saturation and hue leave a
one-channel image unchanged in torchvision). Intensities are clipped as PIL/torchvision clip
``[0, 1]`` images, widened to the image's own range when it exceeds ``[0, 1]`` (z-scored data)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from segssl.methods.mixing import random_boxes


def _per_image(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(like).view(-1, *([1] * (like.ndim - 1)))


def brightness_contrast(
    images: torch.Tensor,
    brightness: float,
    contrast: float,
    p: float = 1.0,
) -> torch.Tensor:
    """Per image with probability ``p``: brightness factor in [1 - b, 1 + b] (x * f) and contrast
    factor in [1 - c, 1 + c] (mean + f (x - mean), the mean of the current image), in a random
    order, clipping after each as torchvision's ``ColorJitter``. (B, 1, H, W)."""
    n = images.shape[0]
    dims = tuple(range(1, images.ndim))
    low = torch.minimum(images.amin(dims, keepdim=True), torch.zeros((), device=images.device))
    high = torch.maximum(images.amax(dims, keepdim=True), torch.ones((), device=images.device))
    apply = _per_image(torch.rand(n) < p, images)
    b = _per_image(torch.empty(n).uniform_(max(0.0, 1 - brightness), 1 + brightness), images)
    c = _per_image(torch.empty(n).uniform_(max(0.0, 1 - contrast), 1 + contrast), images)
    contrast_first = _per_image(torch.rand(n) < 0.5, images)

    def bright(x: torch.Tensor) -> torch.Tensor:
        return torch.maximum(torch.minimum(x * b, high), low)

    def contrasted(x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dims, keepdim=True)
        return torch.maximum(torch.minimum(mean + c * (x - mean), high), low)

    jittered = torch.where(
        contrast_first > 0, bright(contrasted(images)), contrasted(bright(images))
    )
    return torch.where(apply > 0, jittered, images)


def gaussian_blur(
    images: torch.Tensor, p: float = 0.5, sigma: tuple[float, float] = (0.1, 2.0)
) -> torch.Tensor:
    """Per image with probability ``p``, a Gaussian blur of sigma uniform in ``sigma`` (PIL's
    ``GaussianBlur(radius=sigma)`` in UniMatch); reflect padding at the border. (B, 1, H, W)."""
    n = images.shape[0]
    apply = torch.rand(n) < p
    if not apply.any():
        return images
    sigmas = torch.empty(n).uniform_(*sigma)
    radius = min(int(math.ceil(3 * float(sigmas.max()))), min(images.shape[-2:]) - 1)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernels = torch.exp(-0.5 * (offsets[None] / sigmas[:, None]) ** 2)
    kernels = (kernels / kernels.sum(1, keepdim=True)).to(images)  # (B, K)
    x = images.transpose(0, 1)  # (1, B, H, W): one group per image
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernels[:, None, None, :], groups=n)
    x = F.conv2d(x, kernels[:, None, :, None], groups=n).transpose(0, 1)
    return torch.where(_per_image(apply, images) > 0, x, images)


def cutout(images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """ABD's ``cutout_gray``: inside each box, every pixel becomes 0 or 1 at random.
    ``boxes`` (B, H, W) from ``mixing.random_boxes``."""
    noise = torch.randint(0, 2, images.shape, device=images.device).to(images)
    return torch.where(boxes[:, None] > 0, noise, images)


def cutout_jitter(
    images: torch.Tensor, labels: torch.Tensor, cutout_p: float, jitter: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """ABD's ``WeakStrongAugment`` strong branch (both its ACDC scripts): Cutout with 0/1 noise
    (p ``cutout_p``), the label set to background in the box, then brightness and contrast
    jitter ``jitter``. ``labels`` (B', H, W) covers the first B' images of the batch."""
    boxes = random_boxes(images.shape[0], *images.shape[-2:], p=cutout_p, device=images.device)
    images = brightness_contrast(cutout(images, boxes), jitter, jitter)
    labels = labels.masked_fill(boxes[: labels.shape[0]] > 0, 0)
    return images, labels
