"""The phantom's anatomy: labels, random hearts and tissue blobs, and the heart's masks at a
given slice level and frame (normalised coordinates, so image size only sets resolution)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

FIELD_OF_VIEW_MM = 144.0
SLICE_THICKNESS_MM = 10.0
BACKGROUND, RV, MYO, LV = 0, 1, 2, 3
ED_FRAME, ES_FRAME = 1, 2
GROUPS = ("normal", "dilated", "hypertrophic", "infarct", "rv_abnormal")


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


def bump(t: float, centre: float, width: float) -> float:
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
