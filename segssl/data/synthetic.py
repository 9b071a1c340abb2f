"""Built-in synthetic cardiac short-axis cine-MRI phantom, written in the SSL4MIS ACDC h5 layout.

Why: ``python -m segssl train`` must run with no download, and the synthetic data must go through
exactly the same reader as the real ACDC data. The phantom is designed to be learnable but not
trivial: LV and RV blood look alike (and like some background vessels), the myocardium can be
nearly as bright as the surrounding tissue, and contrast, noise and bias vary per patient, so a
model needs shape and context, and unlabeled data (the domain spread) helps.

Layout written under ``root`` (see :func:`ensure_synthetic_dataset`)::

    synthetic.json                          generator version and parameters (the stamp)
    train_slices.list / train.list          training slice ids / volume ids, patient by patient
    val.list / test.list                    held-out volume ids (omitted when a split is empty)
    data/<case>.h5                          image (D,H,W) float32 in [0,1], label (D,H,W) uint8
    data/slices/<case>_slice_<k>.h5         training slices, slice_k = volume[k - 1]

Geometry is drawn in normalised coordinates ([-1, 1] across the field of view), so the image size
only sets the resolution. Labels: 0 background, 1 RV, 2 myocardium, 3 LV (papillary muscles
count as LV, the thin RV free wall as background, as in ACDC).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import h5py
import numpy as np
from scipy import ndimage

GENERATOR_VERSION = 1
STAMP_NAME = "synthetic.json"
FIELD_OF_VIEW_MM = 144.0
SLICE_THICKNESS_MM = 10.0
BACKGROUND, RV, MYO, LV = 0, 1, 2, 3
ED_FRAME, ES_FRAME = 1, 2
GROUPS = ("normal", "dilated", "hypertrophic", "infarct", "rv_abnormal")
_LAYOUT_NAMES = {"data", "train_slices.list", "train.list", "val.list", "test.list", STAMP_NAME}


@dataclass(frozen=True)
class Blob:
    """A soft-tissue ellipse whose size follows a bump along the stack (organs come and go)."""

    cy: float
    cx: float
    ry: float
    rx: float
    angle: float
    intensity: float
    z_centre: float
    z_width: float


@dataclass(frozen=True)
class Heart:
    """Heart geometry at the base of the ED frame; levels and frames are derived from it."""

    cy: float
    cx: float
    drift_y: float
    drift_x: float
    angle: float
    aspect: float
    lv_radius: float
    lv_wobble: tuple[float, float, float, float]
    myo_thickness: float
    thickness_amp: float
    thickness_phase: float
    rv_angle: float
    rv_offset: float
    rv_along: float
    rv_across: float
    rv_wall: float
    rv_reference: float
    papillary_angles: tuple[float, float]
    papillary_size: float


@dataclass(frozen=True)
class Contrast:
    """Per-patient (scanner-like) intensities and acquisition settings."""

    tissue: float
    blood: float
    rv_blood: float
    myo: float
    lung: float
    fat: float
    texture: float
    noise: float
    bias: tuple[float, float, float, float, float]
    psf_sigma: float
    partial_volume_prob: float


@dataclass(frozen=True)
class Anatomy:
    """Everything shared by the two frames of one synthetic patient."""

    group: str
    zoom: float
    body: tuple[float, float, float, float, float]
    fat_width: float
    lungs: tuple[Blob, ...]
    blobs: tuple[Blob, ...]
    heart: Heart
    contrast: Contrast
    levels: tuple[float, float]
    es_factors: tuple[float, float, float]
    texture_seed: int


# ----------------------------------------------------------------------------- geometry helpers


def coordinate_grid(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x) in [-1, 1], so shapes are resolution independent."""
    axis = (np.arange(image_size) + 0.5) / image_size * 2.0 - 1.0
    y, x = np.meshgrid(axis, axis, indexing="ij")
    return y, x


def _rotated(
    y: np.ndarray, x: np.ndarray, cy: float, cx: float, angle: float
) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates relative to (cy, cx) in a frame rotated by ``angle`` (u along, v across)."""
    dy, dx = y - cy, x - cx
    cos, sin = np.cos(angle), np.sin(angle)
    return dx * cos + dy * sin, -dx * sin + dy * cos


def ellipse_radius(
    y: np.ndarray, x: np.ndarray, cy: float, cx: float, ry: float, rx: float, angle: float
) -> np.ndarray:
    """Normalised elliptic radius: < 1 inside the ellipse (used for masks and rings)."""
    u, v = _rotated(y, x, cy, cx, angle)
    return np.sqrt((u / max(rx, 1e-6)) ** 2 + (v / max(ry, 1e-6)) ** 2)


def _bump(t: float, centre: float, width: float) -> float:
    """Smooth size profile along the stack: 1 at ``centre``, 0 beyond ``width``."""
    return float(np.sqrt(max(0.0, 1.0 - ((t - centre) / width) ** 2)))


# ----------------------------------------------------------------------------- sampling


def _sample_heart(rng: np.random.Generator) -> Heart:
    """Heart position, size, orientation and RV placement of one patient (ED base)."""
    turn = rng.uniform(-0.7, 0.7)  # whole-heart rotation around the standard view
    heart = Heart(
        cy=rng.uniform(-0.12, 0.12),
        cx=rng.uniform(-0.08, 0.16),
        drift_y=rng.uniform(-0.06, 0.06),
        drift_x=rng.uniform(-0.06, 0.06),
        angle=rng.uniform(0.0, np.pi),
        aspect=rng.uniform(1.0, 1.35),
        lv_radius=rng.uniform(0.15, 0.21),
        lv_wobble=(
            rng.uniform(0.0, 0.06),
            rng.uniform(0.0, 2 * np.pi),
            rng.uniform(0.0, 0.04),
            rng.uniform(0.0, 2 * np.pi),
        ),
        myo_thickness=rng.uniform(0.05, 0.075),
        thickness_amp=rng.uniform(0.1, 0.4),
        thickness_phase=rng.uniform(0.0, 2 * np.pi),
        rv_angle=np.pi + turn + rng.uniform(-0.25, 0.25),  # RV on the image left, roughly
        rv_offset=rng.uniform(0.55, 0.8),
        rv_along=rng.uniform(0.8, 1.05),
        rv_across=rng.uniform(1.25, 1.6),
        rv_wall=rng.uniform(0.02, 0.035),
        rv_reference=0.0,
        papillary_angles=(turn + rng.uniform(-0.5, 0.2), turn + rng.uniform(1.2, 1.9)),
        papillary_size=rng.uniform(0.18, 0.28),
    )
    return with_rv_reference(heart)


def with_rv_reference(heart: Heart) -> Heart:
    """Fix the RV's length unit to the ED basal epicardial radius, so ES does not drag it."""
    return replace(heart, rv_reference=heart.lv_radius + heart.myo_thickness)


def _sample_contrast(rng: np.random.Generator) -> Contrast:
    """Per-patient contrast, noise and bias; wide ranges make the domain spread."""
    blood = rng.uniform(0.5, 1.0)
    tissue = rng.uniform(0.15, min(0.5, blood - 0.2))
    return Contrast(
        tissue=tissue,
        blood=blood,
        rv_blood=blood * rng.uniform(0.8, 1.1),
        myo=min(tissue * rng.uniform(0.6, 1.15), 0.7 * blood),
        lung=rng.uniform(0.02, 0.1),
        fat=rng.uniform(0.55, 0.95),
        texture=tissue * rng.uniform(0.05, 0.2),
        noise=rng.uniform(0.015, 0.09),
        bias=tuple(rng.uniform(-1.0, 1.0, size=4).tolist()) + (rng.uniform(0.1, 0.7),),
        psf_sigma=rng.uniform(0.3, 0.8),
        partial_volume_prob=rng.uniform(0.0, 0.4),
    )


def _sample_blob(
    rng: np.random.Generator, centre: tuple[float, float], radius: float, intensity: float
) -> Blob:
    """One background organ or vessel near ``centre``, with random shape and stack profile."""
    return Blob(
        cy=centre[0],
        cx=centre[1],
        ry=radius * rng.uniform(0.6, 1.0),
        rx=radius * rng.uniform(0.6, 1.0),
        angle=rng.uniform(0.0, np.pi),
        intensity=intensity,
        z_centre=rng.uniform(-0.3, 1.3),
        z_width=rng.uniform(0.8, 1.6),
    )


def _free_position(
    rng: np.random.Generator, heart: Heart, radius: float, body: tuple[float, ...]
) -> tuple[float, float]:
    """A blob centre inside the body that keeps clear of the heart (rejection sampling)."""
    keep_out = heart.lv_radius + heart.myo_thickness * 1.5 + 0.04 + radius
    for _ in range(100):
        cy, cx = rng.uniform(-0.8, 0.8, size=2)
        inside = ellipse_radius(np.array(cy), np.array(cx), *body) < 0.8
        if inside and np.hypot(cy - heart.cy, cx - heart.cx) > keep_out:
            return float(cy), float(cx)
    return float(np.clip(heart.cy + 0.6, -0.8, 0.8)), float(np.clip(heart.cx - 0.6, -0.8, 0.8))


def _sample_lungs(rng: np.random.Generator, heart: Heart, lung: float) -> tuple[Blob, ...]:
    """Two dark lungs flanking the heart, with a gap so the heart wall stays visible."""
    lungs = []
    for side in (-1.0, 1.0):
        centre = (heart.cy + rng.uniform(-0.15, 0.05), heart.cx + side * rng.uniform(0.55, 0.7))
        blob = _sample_blob(rng, centre, rng.uniform(0.3, 0.42), lung)
        lungs.append(replace(blob, ry=blob.ry * 1.4, z_centre=0.5, z_width=3.0))
    return tuple(lungs)


def _sample_blobs(
    rng: np.random.Generator, heart: Heart, contrast: Contrast, body: tuple[float, ...]
) -> tuple[Blob, ...]:
    """Vessels as bright as blood (the RV/LV look-alikes) plus darker and brighter organs."""
    blobs = []
    for _ in range(rng.integers(1, 4)):
        radius = rng.uniform(0.05, 0.11)
        level = contrast.blood * rng.uniform(0.85, 1.05)
        blobs.append(_sample_blob(rng, _free_position(rng, heart, radius, body), radius, level))
    for _ in range(rng.integers(2, 5)):
        radius = rng.uniform(0.1, 0.25)
        level = contrast.tissue * rng.uniform(0.5, 1.6)
        blobs.append(_sample_blob(rng, _free_position(rng, heart, radius, body), radius, level))
    return tuple(blobs)


def _apply_group(
    heart: Heart, group: str, rng: np.random.Generator
) -> tuple[Heart, tuple[float, float, float]]:
    """ACDC-like pathology groups: shape and contraction differ, so few patients cover little.

    Returns the ED heart and the ES factors (LV radius, myocardial thickness, RV size).
    """
    u = rng.uniform
    if group == "dilated":
        heart = replace(
            heart, lv_radius=heart.lv_radius * 1.3, myo_thickness=heart.myo_thickness * 0.75
        )
        return heart, (u(0.85, 0.95), u(1.05, 1.15), u(0.8, 0.9))
    if group == "hypertrophic":
        heart = replace(
            heart, lv_radius=heart.lv_radius * 0.8, myo_thickness=heart.myo_thickness * 1.6
        )
        return heart, (u(0.45, 0.6), u(1.2, 1.4), u(0.72, 0.85))
    if group == "infarct":
        heart = replace(heart, thickness_amp=u(0.5, 0.7))
        return heart, (u(0.8, 0.9), u(1.1, 1.25), u(0.75, 0.9))
    if group == "rv_abnormal":
        heart = replace(heart, rv_along=heart.rv_along * 1.35, rv_across=heart.rv_across * 1.25)
        return heart, (u(0.6, 0.75), u(1.3, 1.6), u(0.85, 0.95))
    return heart, (u(0.6, 0.72), u(1.3, 1.6), u(0.72, 0.85))


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw one synthetic patient: body, organs, heart, contrast and slice coverage."""
    group = GROUPS[int(rng.integers(len(GROUPS)))]
    heart, es_factors = _apply_group(_sample_heart(rng), group, rng)
    heart = with_rv_reference(heart)
    contrast = _sample_contrast(rng)
    body = (
        rng.uniform(-0.05, 0.05),
        rng.uniform(-0.05, 0.05),
        rng.uniform(0.72, 0.86),
        rng.uniform(0.88, 0.98),
        rng.uniform(-0.15, 0.15),
    )
    return Anatomy(
        group=group,
        zoom=rng.uniform(0.8, 1.2),
        body=body,
        fat_width=rng.uniform(0.04, 0.09),
        lungs=_sample_lungs(rng, heart, contrast.lung),
        blobs=_sample_blobs(rng, heart, contrast, body),
        heart=heart,
        contrast=contrast,
        levels=(rng.uniform(-0.05, 0.08), rng.uniform(0.9, 1.02)),
        es_factors=es_factors,
        texture_seed=int(rng.integers(0, 2**31 - 1)),
    )


# ----------------------------------------------------------------------------- heart per slice


def heart_for_frame(heart: Heart, frame: int, es_factors: tuple[float, float, float]) -> Heart:
    """ES-like frame (2): smaller LV cavity, thicker myocardium, smaller RV."""
    if frame == ED_FRAME:
        return heart
    lv, thick, rv = es_factors
    return replace(
        heart,
        lv_radius=heart.lv_radius * lv,
        myo_thickness=heart.myo_thickness * thick,
        rv_along=heart.rv_along * rv,
        rv_across=heart.rv_across * rv,
    )


def heart_at_level(heart: Heart, t: float) -> Heart:
    """Heart at stack level t (0 base, 1 apex): all shrinks, the RV vanishes towards the apex."""
    lv_scale = float(np.sqrt(max(0.0, 1.0 - (t / 1.12) ** 2)))
    rv_scale = float(np.clip(1.0 - t / 0.85, 0.0, 1.0) ** 0.4)
    return replace(
        heart,
        cy=heart.cy + heart.drift_y * t,
        cx=heart.cx + heart.drift_x * t,
        lv_radius=heart.lv_radius * lv_scale,
        rv_reference=heart.rv_reference * lv_scale,
        myo_thickness=heart.myo_thickness * (1.0 - 0.2 * t),
        rv_along=heart.rv_along * rv_scale,
        rv_across=heart.rv_across * rv_scale,
    )


def heart_masks(y: np.ndarray, x: np.ndarray, heart: Heart) -> dict[str, np.ndarray]:
    """Boolean masks of LV pool, papillary muscles, myocardium, RV blood and RV free wall."""
    u, v = _rotated(y, x, heart.cy, heart.cx, heart.angle)
    u, v = u / np.sqrt(heart.aspect), v * np.sqrt(heart.aspect)
    r, phi = np.hypot(u, v), np.arctan2(v, u)
    a2, p2, a3, p3 = heart.lv_wobble
    endo = heart.lv_radius * (1 + a2 * np.cos(2 * phi - p2) + a3 * np.cos(3 * phi - p3))
    thick = heart.myo_thickness * (1 + heart.thickness_amp * np.cos(phi - heart.thickness_phase))
    lv = r < endo
    heart_disc = r < endo + thick
    papillary = lv & _papillary_mask(u, v, heart)
    rv, rv_wall = _rv_masks(y, x, heart, heart_disc)
    return {"lv": lv, "papillary": papillary, "myo": heart_disc & ~lv, "rv": rv, "rv_wall": rv_wall}


def _papillary_mask(u: np.ndarray, v: np.ndarray, heart: Heart) -> np.ndarray:
    """Two small muscles inside the LV near its wall (dark, but labelled LV as in ACDC)."""
    mask = np.zeros(u.shape, dtype=bool)
    size = heart.papillary_size * heart.lv_radius
    if size < 0.012:
        return mask
    for angle in heart.papillary_angles:
        pu, pv = 0.72 * heart.lv_radius * np.cos(angle), 0.72 * heart.lv_radius * np.sin(angle)
        mask |= np.hypot(u - pu, v - pv) < size
    return mask


def _rv_masks(
    y: np.ndarray, x: np.ndarray, heart: Heart, heart_disc: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """RV crescent: an offset ellipse minus the LV+myocardium disc, and its thin free wall."""
    if heart.rv_along <= 0.0:
        empty = np.zeros(y.shape, dtype=bool)
        return empty, empty
    unit = heart.rv_reference
    cy = heart.cy + heart.rv_offset * unit * np.sin(heart.rv_angle)
    cx = heart.cx + heart.rv_offset * unit * np.cos(heart.rv_angle)
    ry, rx = heart.rv_across * unit, heart.rv_along * unit
    radius = ellipse_radius(y, x, cy, cx, ry, rx, heart.rv_angle)
    rv = (radius < 1.0) & ~heart_disc
    if not rv.any():
        return rv, rv
    wall = (radius < 1.0 + heart.rv_wall / min(rx, ry)) & ~rv & ~heart_disc
    return rv, wall


def slice_label(masks: dict[str, np.ndarray]) -> np.ndarray:
    """Label map from the very masks that are painted, so image and label agree exactly."""
    label = np.zeros(masks["lv"].shape, dtype=np.uint8)
    label[masks["rv"]] = RV
    label[masks["myo"]] = MYO
    label[masks["lv"]] = LV
    return label


# ----------------------------------------------------------------------------- painting


def _texture(anatomy: Anatomy, image_size: int, levels: np.ndarray) -> np.ndarray:
    """Low-frequency tissue texture, smooth across slices and shared by both frames."""
    rng = np.random.default_rng(anatomy.texture_seed)
    noise = rng.standard_normal((len(levels), image_size, image_size))
    smooth = ndimage.gaussian_filter(noise, sigma=(0.7, image_size * 0.05, image_size * 0.05))
    return smooth / max(float(smooth.std()), 1e-8) * anatomy.contrast.texture


def _paint_blob(image: np.ndarray, y: np.ndarray, x: np.ndarray, blob: Blob, t: float) -> None:
    """Paint a blob scaled by its stack profile (absent where the profile is zero)."""
    scale = _bump(t, blob.z_centre, blob.z_width)
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


def min_max_normalise(volume: np.ndarray) -> np.ndarray:
    """Per-volume min-max scaling to [0, 1] in float32, as the SSL4MIS preprocessing does."""
    low, high = float(volume.min()), float(volume.max())
    scaled = (volume - low) / max(high - low, 1e-8)
    return np.clip(scaled, 0.0, 1.0).astype(np.float32)


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
    return min_max_normalise(rician_noise(shaded, rng, contrast.noise))


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


# ----------------------------------------------------------------------------- dataset on disk


@dataclass(frozen=True)
class SyntheticParams:
    """Arguments of :func:`ensure_synthetic_dataset`; with the version they form the stamp."""

    num_train_patients: int
    num_val_patients: int
    num_test_patients: int
    image_size: int
    slices_per_volume: int
    seed: int

    def validate(self) -> None:
        """Reject values that cannot make a dataset, naming the argument."""
        minimum = {
            "num_train_patients": 1,
            "num_val_patients": 0,
            "num_test_patients": 0,
            "image_size": 16,
            "slices_per_volume": 1,
            "seed": 0,
        }
        for name, low in minimum.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.num_patients > 999:
            raise ValueError(f"at most 999 patients in total (ids are 3 digits), got {self}")

    @property
    def num_patients(self) -> int:
        """Total patient count over the three splits."""
        return self.num_train_patients + self.num_val_patients + self.num_test_patients

    def stamp(self) -> dict[str, object]:
        """Content of ``synthetic.json``: reuse the folder only when this matches exactly."""
        params = {key: int(value) for key, value in asdict(self).items()}
        return {"generator": "segssl.synthetic", "version": GENERATOR_VERSION, "params": params}


def patient_id(index: int) -> str:
    """ACDC-style patient id, 1-based: ``patient001``."""
    return f"patient{index + 1:03d}"


def volume_ids(patient: str) -> list[str]:
    """The two frame volumes of a patient: ED-like ``frame01`` and ES-like ``frame02``."""
    return [f"{patient}_frame{frame:02d}" for frame in (ED_FRAME, ES_FRAME)]


def split_patients(params: SyntheticParams) -> dict[str, list[str]]:
    """Disjoint patient ids: training first, then validation, then test."""
    ids = [patient_id(i) for i in range(params.num_patients)]
    n_train, n_val = params.num_train_patients, params.num_val_patients
    return {
        "train": ids[:n_train],
        "val": ids[n_train : n_train + n_val],
        "test": ids[n_train + n_val :],
    }


def list_files(params: SyntheticParams) -> dict[str, list[str]]:
    """Content of each split list file; empty splits get no file."""
    splits = split_patients(params)
    train_volumes = [v for p in splits["train"] for v in volume_ids(p)]
    depth = params.slices_per_volume
    lists = {
        "train_slices.list": [f"{v}_slice_{k}" for v in train_volumes for k in range(1, depth + 1)],
        "train.list": train_volumes,
        "val.list": [v for p in splits["val"] for v in volume_ids(p)],
        "test.list": [v for p in splits["test"] for v in volume_ids(p)],
    }
    return {name: ids for name, ids in lists.items() if ids}


def expected_files(params: SyntheticParams) -> list[str]:
    """Every file a complete dataset holds, relative to the root."""
    lists = list_files(params)
    volumes = [v for name in ("train.list", "val.list", "test.list") for v in lists.get(name, [])]
    files = [STAMP_NAME, *lists]
    files += [f"data/{v}.h5" for v in volumes]
    files += [f"data/slices/{s}.h5" for s in lists["train_slices.list"]]
    return files


def _write_h5(
    path: Path, image: np.ndarray, label: np.ndarray, spacing: tuple[float, ...] | None
) -> None:
    """One case file with gzip-compressed ``image`` and ``label`` (and ``spacing`` if given)."""
    with h5py.File(path, "w") as handle:
        handle.create_dataset("image", data=image, compression="gzip")
        handle.create_dataset("label", data=label, compression="gzip")
        if spacing is not None:
            handle.attrs["spacing"] = np.asarray(spacing, dtype=np.float64)


def _write_patient(folder: Path, params: SyntheticParams, index: int, with_slices: bool) -> None:
    """Both frames of one patient, plus their slice files for training patients."""
    patient_rng = np.random.default_rng([params.seed, index])
    anatomy = sample_anatomy(patient_rng)
    pixel = FIELD_OF_VIEW_MM / (anatomy.zoom * params.image_size)
    spacing = (SLICE_THICKNESS_MM, pixel, pixel)
    for frame, case in zip((ED_FRAME, ES_FRAME), volume_ids(patient_id(index)), strict=True):
        rng = np.random.default_rng([params.seed, index, frame])
        image, label = make_phantom_volume(
            rng, params.image_size, params.slices_per_volume, frame, anatomy
        )
        _write_h5(folder / "data" / f"{case}.h5", image, label, spacing)
        if with_slices:
            _write_slices(folder / "data" / "slices", case, image, label)


def _write_slices(folder: Path, case: str, image: np.ndarray, label: np.ndarray) -> None:
    """Slice files ``<case>_slice_<k>.h5`` with k 1-based: slice_k = volume[k - 1]."""
    for k in range(1, image.shape[0] + 1):
        _write_h5(folder / f"{case}_slice_{k}.h5", image[k - 1], label[k - 1], None)


def write_dataset(folder: Path, params: SyntheticParams) -> None:
    """Write the whole dataset into ``folder``; the stamp goes last, marking completion."""
    (folder / "data" / "slices").mkdir(parents=True, exist_ok=True)
    train = params.num_train_patients
    for index in range(params.num_patients):
        _write_patient(folder, params, index, with_slices=index < train)
    for name, ids in list_files(params).items():
        (folder / name).write_text("".join(f"{i}\n" for i in ids))
    (folder / STAMP_NAME).write_text(json.dumps(params.stamp(), indent=2, sort_keys=True) + "\n")


def is_complete(root: Path, params: SyntheticParams) -> bool:
    """True when the stamp matches these parameters and every expected file exists."""
    try:
        stamp = json.loads((root / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return False
    if stamp != params.stamp():
        return False
    return all((root / name).is_file() for name in expected_files(params))


def _check_replaceable(root: Path) -> None:
    """Refuse to replace a path that is not (a version or a fragment of) our dataset."""
    if not root.exists():
        return
    if not root.is_dir():
        raise ValueError(f"synthetic dataset root {root} exists and is not a directory")
    foreign = sorted(p.name for p in root.iterdir() if p.name not in _LAYOUT_NAMES)
    if foreign:
        raise ValueError(
            f"synthetic dataset root {root} holds files that are not part of a synthetic dataset "
            f"({', '.join(foreign[:5])}); refusing to overwrite it: choose another root"
        )


@contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Serialise writers of one root across processes (no-op where fcntl is unavailable)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_leftovers(root: Path) -> None:
    """Delete temp/old folders of crashed writers (safe: called while holding the lock)."""
    for pattern in (f".{root.name}.tmp-*", f".{root.name}.old-*"):
        for path in root.parent.glob(pattern):
            shutil.rmtree(path, ignore_errors=True)


def _swap_in(new: Path, root: Path) -> None:
    """Replace ``root`` by the complete folder ``new`` using renames only."""
    old = root.parent / f".{root.name}.old-{uuid.uuid4().hex[:12]}"
    if root.exists():
        os.replace(root, old)
    os.replace(new, root)
    shutil.rmtree(old, ignore_errors=True)


def ensure_synthetic_dataset(
    root: str | Path,
    num_train_patients: int = 16,
    num_val_patients: int = 4,
    num_test_patients: int = 4,
    image_size: int = 96,
    slices_per_volume: int = 8,
    seed: int = 0,
) -> Path:
    """Write the synthetic dataset at ``root`` unless a complete one with these arguments exists.

    Returns the absolute root. The data are a deterministic function of the arguments. Writing
    goes into a temporary sibling folder that is renamed into place once complete, under a lock
    file next to ``root``, so an interrupted or concurrent run never leaves a half dataset that
    looks complete. A stale or half-written dataset folder is replaced; a folder holding other
    files raises ``ValueError``.
    """
    params = SyntheticParams(
        num_train_patients, num_val_patients, num_test_patients, image_size, slices_per_volume, seed
    )
    params.validate()
    root = Path(root).expanduser().resolve()
    if is_complete(root, params):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(root.parent / f".{root.name}.lock"):
        if is_complete(root, params):
            return root
        _check_replaceable(root)
        _remove_leftovers(root)
        tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        tmp.mkdir()
        try:
            write_dataset(tmp, params)
            _swap_in(tmp, root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root
