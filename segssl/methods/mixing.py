"""Pieces that mix images of a batch: BCP's copy-paste box, the random boxes of CutMix/Cutout
(UniMatch's and AD-MT's), ABD's patch grid and its displacements, and the largest connected
component of pseudo-labels.

All work on batch tensors on the training device; random draws use torch's generator (seeded by
``seed_everything``)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage


# -- BCP ----------------------------------------------------------------------------------------
def copy_paste_mask(height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """BCP's mask M (H, W): ones, with a zero box of int(2/3 H) x int(2/3 W) at a random
    position (top-left corner uniform in 0 .. H - box - 1, as ``np.random.randint`` there)."""
    box_h, box_w = int(height * 2 / 3), int(width * 2 / 3)
    top = int(torch.randint(0, max(height - box_h, 1), ()).item())
    left = int(torch.randint(0, max(width - box_w, 1), ()).item())
    mask = torch.ones(height, width, device=device)
    mask[top : top + box_h, left : left + box_w] = 0
    return mask


def paste(outer: torch.Tensor, inner: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``outer * M + inner * (1 - M)``: ``inner`` shows inside the zero box of M."""
    return outer * mask + inner * (1 - mask)


# -- CutMix / Cutout boxes ------------------------------------------------------------------------
def random_boxes(
    count: int,
    height: int,
    width: int,
    p: float = 0.5,
    area: tuple[float, float] = (0.02, 0.4),
    ratio: tuple[float, float] = (0.3, 1 / 0.3),
    device: torch.device | None = None,
) -> torch.Tensor:
    """(count, H, W) masks, 1 inside a box drawn with probability ``p`` per image (else all 0):
    the box of UniMatch's ``obtain_cutmix_box`` and ABD's ``cutout_gray`` (area a fraction of the
    image, aspect ratio in ``ratio``, redrawn until it fits)."""
    masks = torch.zeros(count, height, width, device=device)
    for i in range(count):
        if torch.rand(()).item() >= p:
            continue
        size = float(torch.empty(()).uniform_(*area)) * height * width
        while True:
            r = float(torch.empty(()).uniform_(*ratio))
            box_w, box_h = int(np.sqrt(size / r)), int(np.sqrt(size * r))
            x = int(torch.randint(0, width, ()).item())
            y = int(torch.randint(0, height, ()).item())
            if x + box_w <= width and y + box_h <= height:
                break
        masks[i, y : y + box_h, x : x + box_w] = 1
    return masks


# -- ABD's patch grid ------------------------------------------------------------------------------
def check_grid(height: int, width: int, grid: int) -> None:
    if grid < 1 or height % grid or width % grid:
        raise ValueError(
            f"method.grid={grid}: the image size {height}x{width} must be a multiple of the grid "
            "(ABD cuts each image into grid x grid patches)"
        )


def to_patches(x: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, [C,] H, W) -> (B, [C,] grid*grid, H/grid, W/grid); patch k is row k // grid,
    column k % grid (einops ``b (h p1) (w p2) -> b (h w) p1 p2``)."""
    *lead, h, w = x.shape
    check_grid(h, w, grid)
    x = x.reshape(*lead, grid, h // grid, grid, w // grid)
    n = len(lead)
    x = x.permute(*range(n), n, n + 2, n + 1, n + 3)
    return x.reshape(*lead, grid * grid, h // grid, w // grid)


def from_patches(patches: torch.Tensor, grid: int) -> torch.Tensor:
    """Inverse of ``to_patches``."""
    *lead, _, ph, pw = patches.shape
    n = len(lead)
    x = patches.reshape(*lead, grid, grid, ph, pw).permute(*range(n), n, n + 2, n + 1, n + 3)
    return x.reshape(*lead, grid * ph, grid * pw)


def patch_means(x: torch.Tensor, grid: int) -> torch.Tensor:
    """Mean over each patch: (B, H, W) -> (B, grid*grid); (B, C, H, W) -> (B, grid*grid, C)."""
    if x.ndim == 3:
        return F.adaptive_avg_pool2d(x[:, None], grid).flatten(1)
    return F.adaptive_avg_pool2d(x, grid).flatten(2).transpose(1, 2)


def replace_patches(
    images: torch.Tensor,
    where: torch.Tensor,
    donors: torch.Tensor,
    donor_index: torch.Tensor,
    grid: int,
    apply: torch.Tensor | None = None,
) -> torch.Tensor:
    """A copy of ``images`` (B, H, W) whose patch ``where[i]`` is patch ``donor_index[i]`` of
    ``donors[i]``, for the images where ``apply`` (B,) is true (all if None)."""
    out = to_patches(images, grid).clone()
    source = to_patches(donors, grid)
    rows = torch.arange(images.shape[0], device=images.device)
    patch = source[rows, donor_index]
    if apply is not None:
        # keep the image's own patch where not applied: a boolean index (rows[apply]) would
        # read the mask's count back from the device
        keep = ~apply.to(device=images.device, dtype=torch.bool)
        patch = torch.where(keep.view(-1, *[1] * (patch.ndim - 1)), out[rows, where], patch)
    out[rows, where] = patch
    return from_patches(out, grid)


def reliable_displacement(
    images_1: torch.Tensor,
    images_2: torch.Tensor,
    confidence_1: torch.Tensor,
    confidence_2: torch.Tensor,
    logits_1: torch.Tensor,
    logits_2: torch.Tensor,
    grid: int = 4,
    top_k: int = 4,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """ABD-R on unlabeled images (B, H, W) of two views. Each view's least confident patch (mean
    max-probability) is replaced by a patch of the other view: among the other view's ``top_k``
    most confident patches, the one whose mean-logit class distribution is closest, in
    KL(p_weak || p_donor), to that of the replaced patch. Returns both new batches and the
    chosen indices (``weak_1``/``weak_2``: replaced patch; ``donor_1``/``donor_2``: the patch of
    the other view pasted into view 1 / view 2)."""
    conf_1, conf_2 = patch_means(confidence_1, grid), patch_means(confidence_2, grid)
    dist_1 = torch.softmax(patch_means(logits_1.float(), grid), dim=-1)  # (B, P, C)
    dist_2 = torch.softmax(patch_means(logits_2.float(), grid), dim=-1)
    weak_1, weak_2 = conf_1.argmin(1), conf_2.argmin(1)
    top_1, top_2 = conf_1.topk(top_k, dim=1).indices, conf_2.topk(top_k, dim=1).indices
    rows = torch.arange(images_1.shape[0], device=images_1.device)

    def closest(top: torch.Tensor, dist: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Among ``top`` patches of ``dist``, the one of least KL(target || patch)."""
        candidates = dist[rows[:, None], top]  # (B, k, C)
        target = target[:, None]  # (B, 1, C)
        kl = (target * (target.log() - candidates.log())).sum(-1)
        return top[rows, kl.argmin(1)]

    donor_1 = closest(top_2, dist_2, dist_1[rows, weak_1])  # view 2's patch for view 1
    donor_2 = closest(top_1, dist_1, dist_2[rows, weak_2])
    new_1 = replace_patches(images_1, weak_1, images_2, donor_1, grid)
    new_2 = replace_patches(images_2, weak_2, images_1, donor_2, grid)
    chosen = {"weak_1": weak_1, "weak_2": weak_2, "donor_1": donor_1, "donor_2": donor_2}
    return new_1, new_2, chosen


def inverse_displacement(
    images_1: torch.Tensor,
    images_2: torch.Tensor,
    labels_1: torch.Tensor,
    labels_2: torch.Tensor,
    confidence_1: torch.Tensor,
    confidence_2: torch.Tensor,
    grid: int = 4,
    p: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """ABD-I on labeled images (B, H, W): with probability ``p`` per image, each view's most
    confident patch is replaced by the other view's least confident one, and the labels alike.
    Returns (images_1, images_2, labels_1, labels_2)."""
    conf_1, conf_2 = patch_means(confidence_1, grid), patch_means(confidence_2, grid)
    apply = torch.rand(images_1.shape[0]) < p
    apply = apply.to(images_1.device)
    best_1, worst_1 = conf_1.argmax(1), conf_1.argmin(1)
    best_2, worst_2 = conf_2.argmax(1), conf_2.argmin(1)
    new = []
    for first, second in ((images_1, images_2), (labels_1, labels_2)):
        new.append(replace_patches(first, best_1, second, worst_2, grid, apply))
        new.append(replace_patches(second, best_2, first, worst_1, grid, apply))
    return new[0], new[1], new[2], new[3]


def mixed_reliable_displacement(
    images_1: torch.Tensor,
    images_2: torch.Tensor,
    confidence_1: torch.Tensor,
    confidence_2: torch.Tensor,
    logits_1: torch.Tensor,
    logits_2: torch.Tensor,
    grid: int = 4,
    top_k: int = 4,
    p: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """ABD-R as ABD's BCP script does it (``ABD_R_BCP``): per image, with probability ``p`` the
    KL-guided choice of ``reliable_displacement`` among the other view's ``top_k`` most
    confident patches, otherwise simply the other view's most confident patch (``top_k`` = 1).
    The least confident patch of each view is the one replaced either way. ``chosen`` adds
    ``guided`` (B,), true where the KL-guided choice was used."""
    guided_1, guided_2, guided = reliable_displacement(
        images_1, images_2, confidence_1, confidence_2, logits_1, logits_2, grid, top_k
    )
    plain_1, plain_2, plain = reliable_displacement(
        images_1, images_2, confidence_1, confidence_2, logits_1, logits_2, grid, 1
    )
    use = (torch.rand(images_1.shape[0]) < p).to(images_1.device)
    per_image = use.view(-1, *[1] * (images_1.ndim - 1))
    new_1 = torch.where(per_image, guided_1, plain_1)
    new_2 = torch.where(per_image, guided_2, plain_2)
    chosen = {k: torch.where(use, guided[k], plain[k]) for k in guided}
    chosen["guided"] = use
    return new_1, new_2, chosen


# -- AD-MT's CutMix --------------------------------------------------------------------------------
def beta_cutmix_boxes(
    count: int,
    height: int,
    width: int,
    alpha: float = 4.0,
    device: torch.device | None = None,
) -> torch.Tensor:
    """(count, H, W) masks, 1 inside a box: AD-MT's ``rand_bbox``. One ``lam ~ Beta(alpha,
    alpha)`` per batch sets the box sides ``int(side * sqrt(1 - lam))``; each image draws its
    own centre, uniform in ``[side // 8, side)`` on each axis, and the box is clipped to the
    image (so boxes near the border are smaller)."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    cut = (1.0 - lam) ** 0.5
    cut_h, cut_w = int(height * cut), int(width * cut)
    rows = torch.randint(int(height / 8), height, (count,))
    cols = torch.randint(int(width / 8), width, (count,))
    top, bottom = (rows - cut_h // 2).clamp(0, height), (rows + cut_h // 2).clamp(0, height)
    left, right = (cols - cut_w // 2).clamp(0, width), (cols + cut_w // 2).clamp(0, width)
    r = torch.arange(height).view(1, -1, 1)
    c = torch.arange(width).view(1, 1, -1)
    inside = (r >= top.view(-1, 1, 1)) & (r < bottom.view(-1, 1, 1))
    inside = inside & (c >= left.view(-1, 1, 1)) & (c < right.view(-1, 1, 1))
    return inside.float().to(device)


# -- pseudo-labels -------------------------------------------------------------------------------
def largest_component(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per image and foreground class, keep only the largest 8-connected component (skimage's
    default in 2-D); pixels of the other components become background. (B, H, W) integers."""
    array = labels.detach().cpu().numpy()
    out = np.zeros_like(array)
    structure = np.ones((3,) * (array.ndim - 1), dtype=bool)
    for i, image in enumerate(array):
        for c in range(1, num_classes):
            components, count = ndimage.label(image == c, structure=structure)
            if count == 0:
                continue
            sizes = np.bincount(components.ravel())[1:]
            out[i][components == 1 + int(sizes.argmax())] = c
    return torch.as_tensor(out, device=labels.device)
