"""Painting an anatomy into images: tissue, heart contrast, then the MR acquisition (bias field,
partial volume, Rician noise) and whole phantom volumes."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from segssl.data.image_io import normalise
from segssl.data.synthetic.anatomy import (
    ED_FRAME,
    ES_FRAME,
    Anatomy,
    Blob,
    Contrast,
    bump,
    coordinate_grid,
    ellipse_radius,
    heart_at_level,
    heart_for_frame,
    heart_masks,
    sample_anatomy,
    slice_label,
)

# ----------------------------------------------------------------------------- painting


def _texture(anatomy: Anatomy, image_size: int, levels: np.ndarray) -> np.ndarray:
    """Low-frequency tissue texture, smooth across slices and shared by both frames."""
    rng = np.random.default_rng(anatomy.texture_seed)
    noise = rng.standard_normal((len(levels), image_size, image_size))
    smooth = ndimage.gaussian_filter(noise, sigma=(0.7, image_size * 0.05, image_size * 0.05))
    return smooth / max(float(smooth.std()), 1e-8) * anatomy.contrast.texture


def _paint_blob(image: np.ndarray, y: np.ndarray, x: np.ndarray, blob: Blob, t: float) -> None:
    """Paint a blob scaled by its stack profile (absent where the profile is zero)."""
    scale = bump(t, blob.z_centre, blob.z_width)
    if scale <= 0.0:
        return
    radius = ellipse_radius(y, x, blob.cy, blob.cx, blob.ry * scale, blob.rx * scale, blob.angle)
    image[radius < 1.0] = blob.intensity


def paint_background(
    y: np.ndarray, x: np.ndarray, anatomy: Anatomy, texture: np.ndarray, t: float
) -> np.ndarray:
    """Air, body with a bright fat rim, textured tissue, organs, vessels and lungs."""
    contrast = anatomy.contrast
    body_radius = ellipse_radius(y, x, *anatomy.body)
    inside = np.full(y.shape, contrast.tissue)
    for blob in anatomy.blobs + anatomy.lungs:
        _paint_blob(inside, y, x, blob, t)
    image = np.zeros(y.shape)
    image[body_radius < 1.0] = contrast.fat
    inner = body_radius < 1.0 - anatomy.fat_width
    image[inner] = inside[inner] + texture[inner]
    return image


def paint_heart(image: np.ndarray, masks: dict[str, np.ndarray], contrast: Contrast) -> None:
    """Paint the heart over the background: blood pools bright, muscle darker."""
    image[masks["rv_wall"] | masks["myo"] | masks["rv"] | masks["lv"]] = contrast.tissue
    image[masks["rv_wall"] | masks["myo"]] = contrast.myo
    image[masks["rv"]] = contrast.rv_blood
    image[masks["lv"]] = contrast.blood
    image[masks["papillary"]] = contrast.myo


def stack_levels(anatomy: Anatomy, num_slices: int) -> np.ndarray:
    """Evenly spaced levels from near the base to near the apex for this patient."""
    start, stop = anatomy.levels
    if num_slices == 1:
        return np.array([0.5 * (start + stop)])
    return np.linspace(start, stop, num_slices)


# ----------------------------------------------------------------------------- acquisition


def bias_field(y: np.ndarray, x: np.ndarray, bias: tuple[float, ...]) -> np.ndarray:
    """Smooth multiplicative coil shading: exp of a normalised quadratic in (y, x)."""
    c1, c2, c3, c4, strength = bias
    poly = c1 * x + c2 * y + c3 * x * y + c4 * (x**2 - y**2)
    return np.exp(strength * poly / max(float(np.abs(poly).max()), 1e-8))


def partial_volume(clean: np.ndarray, rng: np.random.Generator, probability: float) -> np.ndarray:
    """Occasionally mix a slice with a neighbour, as thick slices do (labels stay unchanged)."""
    mixed = clean.copy()
    depth = clean.shape[0]
    for k in range(depth):
        hit, weight, side = rng.random(), rng.uniform(0.15, 0.4), rng.integers(0, 2)
        neighbour = k - 1 if side == 0 else k + 1
        if depth > 1 and hit < probability and 0 <= neighbour < depth:
            mixed[k] = (1.0 - weight) * clean[k] + weight * clean[neighbour]
    return mixed


def rician_noise(image: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Magnitude of the image plus complex Gaussian noise (MRI magnitude statistics)."""
    real = image + rng.normal(0.0, sigma, size=image.shape)
    imag = rng.normal(0.0, sigma, size=image.shape)
    return np.hypot(real, imag)


def acquire(
    clean: np.ndarray, anatomy: Anatomy, rng: np.random.Generator, image_size: int
) -> np.ndarray:
    """Scanner effects on the clean stack: PSF blur, partial volume, bias field, Rician noise."""
    contrast = anatomy.contrast
    sigma = contrast.psf_sigma * image_size / 96.0
    blurred = ndimage.gaussian_filter(clean, sigma=(0.0, sigma, sigma))
    mixed = partial_volume(blurred, rng, contrast.partial_volume_prob)
    y, x = coordinate_grid(image_size)
    shaded = mixed * bias_field(y, x, contrast.bias)[None]
    # per-volume min-max to [0, 1] as the SSL4MIS preprocessing (a blank volume gives zeros)
    noisy = rician_noise(shaded, rng, contrast.noise)
    return normalise(noisy, "minmax", "synthetic phantom", constant="zeros")


# ----------------------------------------------------------------------------- volumes


def make_phantom_volume(
    rng: np.random.Generator,
    image_size: int,
    num_slices: int,
    frame: int,
    anatomy: Anatomy | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One short-axis stack: image (D,H,W) float32 in [0,1] and label (D,H,W) uint8.

    ``anatomy`` is drawn from ``rng`` when not given; pass the same anatomy for both frames of
    a patient. ``rng`` also drives the per-frame noise and partial-volume effects.
    """
    if frame not in (ED_FRAME, ES_FRAME):
        raise ValueError(f"frame must be {ED_FRAME} (ED-like) or {ES_FRAME} (ES-like), got {frame}")
    if image_size < 8 or num_slices < 1:
        raise ValueError(
            f"image_size must be >= 8 and num_slices >= 1, got {image_size} and {num_slices}"
        )
    anatomy = sample_anatomy(rng) if anatomy is None else anatomy
    y, x = coordinate_grid(image_size)
    y, x = y / anatomy.zoom, x / anatomy.zoom
    levels = stack_levels(anatomy, num_slices)
    texture = _texture(anatomy, image_size, levels)
    heart = heart_for_frame(anatomy.heart, frame, anatomy.es_factors)
    clean = np.empty((num_slices, image_size, image_size))
    label = np.empty((num_slices, image_size, image_size), dtype=np.uint8)
    for k, t in enumerate(levels):
        masks = heart_masks(y, x, heart_at_level(heart, float(t)))
        clean[k] = paint_background(y, x, anatomy, texture[k], float(t))
        paint_heart(clean[k], masks, anatomy.contrast)
        label[k] = slice_label(masks)
    return acquire(clean, anatomy, rng, image_size), label
