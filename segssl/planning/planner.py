"""From a dataset fingerprint to a training plan: every choice with the reason it was made.

The rules follow nnU-Net's where one exists (2-D when the spacing is anisotropic by more than 3,
the median spacing as the target, CT clipped and z-scored on foreground statistics, the largest
patch that fits the memory) and the semi-supervised protocols otherwise (SSL4MIS's 2-D UNet and
batch of 24 slices, half labeled; UA-MT's VNet and batch of 4 patches, half labeled; DSAIF's
area threshold of 50 pixels at 256x256, scaled with the input's area).

The memory rule uses ``segssl.models.footprint.activation_bytes``, whose per-architecture
factors were measured with autograd's saved-tensor hooks, not guessed; only half the budget is
planned for, since activations are a floor of the peak (weights, gradients, optimiser state,
the backward pass's transient buffers and library workspaces come on top).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf

from segssl.filters.area_threshold import (
    REFERENCE_AREA_THRESHOLD,
    REFERENCE_SHAPE,
    scaled_area_threshold,
)
from segssl.models.footprint import activation_bytes, footprint_of

ANISOTROPY_FOR_2D = 3.0  # nnU-Net's threshold for 2-D / anisotropic handling
PLANNED_SHARE = 0.5  # of plan.gpu_memory_gb: activations are a floor of the peak
MAX_BATCH_2D = 24  # SSL4MIS's ACDC batch (12 labeled)
MIN_BATCH = 4
BATCH_3D = 4  # UA-MT / SSL4MIS 3-D batch (2 labeled)
MIN_SIDE = 32  # the UNets pool 4 times and need more than one pixel at the bottom
EPOCHS = 300  # passes over the training items; bounded below
MIN_STEPS, MAX_STEPS = 2000, 30000

# the network of each dimensionality: a config of conf/model/
MODELS = {2: "unet2d", 3: "vnet"}


def model_config(choice: str) -> dict[str, Any]:
    """The packaged ``conf/model/<choice>.yaml`` as a plain dict."""
    from segssl.runs.hydra_app import config_dir

    config = OmegaConf.load(config_dir() / "model" / f"{choice}.yaml")
    return OmegaConf.to_container(config, resolve=False)


class PlanError(ValueError):
    """A plan setting that cannot work; the message names it."""


def method_target(method: str) -> str:
    """The class ``conf/method/<method>.yaml`` builds, following its first parent method file
    (``dsaif.yaml`` -> ``cps.yaml``), so a new method needs no entry here."""
    from segssl.runs.hydra_app import config_dir

    name, seen = method, []
    while name not in seen:
        seen.append(name)
        path = config_dir() / "method" / f"{name}.yaml"
        if not path.is_file():
            raise PlanError(f"plan.method={method!r}: no method config {path}")
        config = OmegaConf.load(path)
        target = OmegaConf.select(config, "method._target_")
        if target:
            return str(target)
        parents = [d for d in config.get("defaults", []) if isinstance(d, str) and d[0] != "_"]
        if not parents:
            break
        name = parents[0]
    raise PlanError(
        f"plan.method={method!r}: conf/method/{'.yaml -> '.join(seen)}.yaml builds "
        "no method._target_"
    )


@dataclass(frozen=True)
class Memory:
    """Activation bytes of one training step (a model config trained by a method class) and the
    share of the GPU they may take."""

    model: dict[str, Any]
    method_target: str
    gpu_memory_gb: float

    @property
    def budget(self) -> float:
        return self.gpu_memory_gb * 2**30 * PLANNED_SHARE

    def bytes(self, dims: int, size: Any, batch: int) -> int | None:
        """None when the model reports no footprint or is not ``dims``-D."""
        footprint = footprint_of(self.model)
        if footprint is None or footprint.spatial_dims != dims:
            return None
        sides = footprint.sides(size)
        if sides is None:
            return None
        return activation_bytes(footprint, sides, batch, "32", self.trained_networks)

    @property
    def trained_networks(self) -> int:
        """The networks the method trains with gradients, as its class declares (imported
        here, when a plan is made, not when this module is)."""
        from hydra.utils import get_class

        return len(get_class(self.method_target).trained_networks)


@dataclass
class Plan:
    """Choices (setting -> value) and why each was made; ``overrides`` are the Hydra overrides
    that turn the plan into a ``train`` command."""

    name: str
    choices: dict[str, Any] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)

    def choose(self, key: str, value: Any, reason: str) -> None:
        self.choices[key], self.reasons[key] = value, reason

    def as_json(self) -> dict[str, Any]:
        return {
            key: {"value": value, "reason": self.reasons[key]}
            for key, value in self.choices.items()
        }


def make_plan(
    fingerprint: dict[str, Any],
    *,
    name: str,
    gpu_memory_gb: float = 24.0,
    method: str = "dsaif",
) -> Plan:
    """The plan for a fingerprinted dataset (see the module docstring for the rules)."""
    plan = Plan(name)
    spacing = fingerprint["spacing"]["median"]
    anisotropy = fingerprint["spacing"]["anisotropy"]
    coarse = int(max(range(3), key=lambda a: spacing[a]))
    stored_2d = fingerprint["dimensionality"] == 2
    if stored_2d:
        dims, why = 2, "the images are 2-D"
    elif anisotropy > ANISOTROPY_FOR_2D:
        dims = 2
        why = (
            f"median spacing {_mm(spacing)}: the coarse axis {coarse} is {anisotropy:.1f}x the "
            f"finest (> {ANISOTROPY_FOR_2D:g}, nnU-Net's threshold), so 2-D slices along it"
        )
    else:
        dims = 3
        why = (
            f"median spacing {_mm(spacing)} is near-isotropic (anisotropy {anisotropy:.2f} <= "
            f"{ANISOTROPY_FOR_2D:g}), so 3-D patches see context on every axis"
        )
    plan.choose("data.layout_options.dims", dims, why)
    if dims == 2 and not stored_2d:
        plan.choose(
            "data.layout_options.slice_axis",
            coarse,
            f"axis {coarse} has the coarsest median spacing ({spacing[coarse]:.3g} mm)",
        )
    else:
        plan.choose("data.layout_options.slice_axis", 2, "NIfTI's z axis (the default)")
    _target_spacing(plan, fingerprint, dims)
    _normalisation(plan, fingerprint)
    model_choice = MODELS[dims]
    memory = Memory(model_config(model_choice), method_target(method), gpu_memory_gb)
    plan.choose(
        "model",
        model_choice,
        "2-D: MONAI's BasicUNet (16..256 features), the network of +experiment=acdc"
        if dims == 2
        else "3-D: the VNet of UA-MT and its successors (+experiment=la)",
    )
    if dims == 2:
        _slice_size_and_batch(plan, fingerprint, memory)
    else:
        _patch_and_batch(plan, fingerprint, memory)
    _fit_labeled_items(plan, fingerprint, dims)
    plan.choose(
        "evaluation",
        "slices" if dims == 2 else "sliding_window",
        "2-D networks predict volumes slice by slice"
        if dims == 2
        else "3-D networks predict whole volumes by overlapping patches",
    )
    _classes(plan, fingerprint)
    _dsaif_threshold(plan, dims)
    _schedule(plan, fingerprint, dims)
    plan.choose("method", method, "DSAIF (cross pseudo supervision on Max-/Min-tree views)")
    return plan


def _mm(values: list[float]) -> str:
    return "x".join(f"{v:.3g}" for v in values) + " mm"


def _target_spacing(plan: Plan, fingerprint: dict[str, Any], dims: int) -> None:
    spacing = fingerprint["spacing"]
    if dims == 2:
        plan.choose(
            "data.layout_options.target_spacing",
            None,
            "2-D: every slice is resized to data.image_size for training and inference (the "
            "SSL4MIS 2-D protocol), which fixes the in-plane scale; resampling first would be "
            "undone by that resize, and the slice axis is never interpolated",
        )
        return
    if spacing["min"] == spacing["max"]:
        plan.choose(
            "data.layout_options.target_spacing",
            None,
            f"every case already has spacing {_mm(spacing['median'])}: nothing to resample",
        )
        return
    plan.choose(
        "data.layout_options.target_spacing",
        [round(s, 4) for s in spacing["median"]],
        f"the median spacing (nnU-Net's choice for near-isotropic data); spacings range "
        f"{_mm(spacing['min'])} to {_mm(spacing['max'])}, so cases are resampled to it "
        "(image linear, label nearest)",
    )


def _normalisation(plan: Plan, fingerprint: dict[str, Any]) -> None:
    modality = fingerprint["modality"]
    intensity = fingerprint["intensity"]
    if modality["guess"] == "CT" and intensity.get("foreground_voxels_sampled"):
        numbers = {
            "low": round(intensity["p00_5"], 3),
            "high": round(intensity["p99_5"], 3),
            "mean": round(intensity["mean"], 3),
            "std": round(max(intensity["std"], 1e-6), 3),
        }
        plan.choose(
            "data.layout_options.normalize",
            "ct",
            f"CT ({modality['reason']}): Hounsfield units mean the same in every scan, so one "
            "dataset-wide mapping: clip to the foreground's 0.5-99.5 percentiles, then z-score "
            "with the foreground mean and std (nnU-Net's CT scheme)",
        )
        plan.choose(
            "data.layout_options.intensity",
            numbers,
            f"from {intensity['foreground_voxels_sampled']} foreground voxels sampled over the "
            "labeled cases",
        )
        return
    plan.choose(
        "data.layout_options.normalize",
        "zscore",
        f"MR ({modality['reason']}): each scan's scale is its own, so each image is z-scored",
    )
    plan.choose("data.layout_options.intensity", None, "only CT uses dataset-wide numbers")


def _gb(size: float) -> str:
    return f"{size / 2**30:.1f} GB"


def _slice_size_and_batch(plan: Plan, fingerprint: dict[str, Any], memory: Memory) -> None:
    budget, gpu_memory_gb = memory.budget, memory.gpu_memory_gb
    axis = plan.choices["data.layout_options.slice_axis"]
    median = fingerprint["shape"]["median"]
    in_plane = [median[a] for a in range(3) if a != axis]
    side = largest = max(MIN_SIDE, min(512, 16 * math.ceil(max(in_plane) / 16)))
    while True:
        per_sample = memory.bytes(2, side, 1)
        batch = min(MAX_BATCH_2D, int(budget // per_sample) // 2 * 2)
        if batch >= MIN_BATCH or side <= MIN_SIDE:
            break
        side = max(MIN_SIDE, side // 2 // 16 * 16)
    batch = max(batch, 2)
    plan.choose(
        "data.image_size",
        side,
        f"the larger median in-plane side ({max(in_plane):.0f} px) rounded up to a multiple of "
        f"16 (at least {MIN_SIDE}: the UNet pools 4 times)"
        + ("" if side == largest else f", halved from {largest} until {MIN_BATCH} slices fit"),
    )
    plan.choose(
        "data.batch_size",
        batch,
        f"{_gb(per_sample)} of activations per slice for the two networks (measured factors, "
        f"segssl/models/footprint.py); {batch} x that = {_gb(batch * per_sample)} within half "
        f"of plan.gpu_memory_gb={gpu_memory_gb:g} (capped at SSL4MIS's {MAX_BATCH_2D})",
    )
    plan.choose("data.labeled_batch_size", batch // 2, "half of each batch labeled (SSL4MIS)")
    plan.choose("data.patch_size", None, "2-D training uses data.image_size")


def _patch_and_batch(plan: Plan, fingerprint: dict[str, Any], memory: Memory) -> None:
    budget, gpu_memory_gb = memory.budget, memory.gpu_memory_gb
    target = plan.choices["data.layout_options.target_spacing"]
    median_shape = fingerprint["shape"]["median"]
    smallest = fingerprint["shape"]["min"]
    spacing = fingerprint["spacing"]["median"]
    scale = [1.0] * 3 if target is None else [spacing[a] / target[a] for a in range(3)]
    limit = [
        max(16, int(min(median_shape[a], smallest[a]) * scale[a]) // 16 * 16) for a in range(3)
    ]
    patch = list(limit)
    while memory.bytes(3, patch, BATCH_3D) > budget:
        largest = max(range(3), key=lambda a: patch[a])
        if patch[largest] <= 16:
            break
        patch[largest] -= 16
    needed = memory.bytes(3, patch, BATCH_3D)
    plan.choose(
        "data.patch_size",
        patch,
        f"the largest multiple-of-16 patch within the smallest case ({limit} voxels at the "
        f"target spacing) whose {BATCH_3D}-patch batch needs {_gb(needed)} of activations for "
        f"the two networks, within half of plan.gpu_memory_gb={gpu_memory_gb:g} (the longest "
        "side shrinks first, as nnU-Net does)",
    )
    plan.choose("data.batch_size", BATCH_3D, "UA-MT's 3-D batch: 4 patches, 2 labeled")
    plan.choose("data.labeled_batch_size", BATCH_3D // 2, "half of each batch labeled")
    plan.choose("data.image_size", None, "3-D training uses data.patch_size")
    plan.choose(
        "evaluation.stride",
        [max(1, p // 2) for p in patch],
        "half-patch overlap between sliding windows (nnU-Net's 0.5)",
    )


def _fit_labeled_items(plan: Plan, fingerprint: dict[str, Any], dims: int) -> None:
    """Each batch draws data.labeled_batch_size distinct labeled items: no more than exist."""
    labeled = [c for c in fingerprint["per_case"] if c["split"] == "train" and c["labeled"]]
    axis = plan.choices["data.layout_options.slice_axis"]
    items = sum(c["shape"][axis] for c in labeled) if dims == 2 else len(labeled)
    half = plan.choices["data.labeled_batch_size"]
    if items >= half:
        return
    what = "slices" if dims == 2 else "volumes"
    plan.choose(
        "data.labeled_batch_size",
        items,
        f"the training set has only {items} labeled {what}: half of each batch labeled, "
        f"no more than exist (memory would allow {half})",
    )
    plan.choose("data.batch_size", 2 * items, f"twice the {items} labeled {what} per batch")


def _classes(plan: Plan, fingerprint: dict[str, Any]) -> None:
    labels = fingerprint["labels"]
    values = labels["values"]
    count = max(values) + 1
    missing = sorted(set(range(count)) - set(values))
    why = f"label values {values} found"
    if missing:
        why += f"; value(s) {missing} never appear but keep their class index"
    plan.choose("data.num_classes", count, why)
    if plan.choices["evaluation"] == "sliding_window":
        binary = count == 2
        plan.choose(
            "evaluation.threshold",
            0.5 if binary else None,
            "binary: foreground where its probability > 0.5 (UA-MT's protocol)"
            if binary
            else "more than one foreground class: the most probable class (argmax)",
        )
    classes = labels["classes"]
    names = [classes.get(str(v), {}).get("name", f"class_{v}") for v in range(1, count)]
    plan.choose(
        "data.class_names",
        names,
        "from dataset.json's labels"
        if any(not n.startswith("class_") for n in names)
        else "no dataset.json with label names: numbered",
    )


def _dsaif_threshold(plan: Plan, dims: int) -> None:
    if dims == 2:
        side = plan.choices["data.image_size"]
        shape = (side, side)
        what = f"{side}x{side} slices"
    else:
        shape = tuple(plan.choices["data.patch_size"])
        what = "x".join(map(str, shape)) + " patches (the same share of the voxels)"
    share = REFERENCE_AREA_THRESHOLD / math.prod(REFERENCE_SHAPE)
    plan.choose(
        "filter.area_threshold",
        scaled_area_threshold(shape),
        f"the published {REFERENCE_AREA_THRESHOLD} pixels at 256x256 ({share:.3%} "
        f"of the image) scaled to {what}; the same value on a smaller input would remove "
        "relatively larger structures and make the views coarse",
    )


def _schedule(plan: Plan, fingerprint: dict[str, Any], dims: int) -> None:
    per_case = [c for c in fingerprint["per_case"] if c["split"] == "train"]
    if dims == 2:
        axis = plan.choices["data.layout_options.slice_axis"]
        items = sum(c["shape"][axis] for c in per_case)
        what = f"{items} training slices"
    else:
        items = len(per_case)
        what = f"{items} training volumes (one patch each per pass)"
    batch = plan.choices["data.batch_size"]
    per_epoch = math.ceil(items / batch)
    steps = min(MAX_STEPS, max(MIN_STEPS, round(EPOCHS * per_epoch / 500) * 500))
    plan.choose(
        "trainer.max_steps",
        steps,
        f"{EPOCHS} passes over {what} at batch {batch} ({per_epoch} steps each), within "
        f"[{MIN_STEPS}, {MAX_STEPS}] (SSL4MIS trains ACDC 30000 steps, UA-MT LA 6000)",
    )
    interval = min(500, max(50, round(steps / 40 / 50) * 50))
    plan.choose(
        "trainer.val_check_interval",
        interval,
        "about 40 validations over the run, every 50 to 500 steps",
    )
    split = fingerprint.get("split") or {"source": "lists"}
    if split["source"] == "lists":
        plan.choose(
            "data.labeled",
            fingerprint["cases"]["labeled"],
            f"every labeled case of train.list ({fingerprint['cases']['labeled']} labeled, "
            f"{fingerprint['cases']['unlabeled']} unlabeled)",
        )
        return
    counts = split["labeled_per_fold"]
    plan.choose(
        "data.layout_options.num_folds",
        split["folds"],
        f"no val.list: nnU-Net's cross-validation, {split['folds']} folds "
        + (
            f"read from {split['file']}"
            if split["source"] != "made"
            else f"made with seed 12345, saved to {split['file']} (by plan, or the first run)"
        )
        + f"; train one with data.fold=0..{split['folds'] - 1}, or all",
    )
    plan.choose(
        "data.labeled",
        min(counts),
        f"every labeled training case of the smallest fold (folds train on {counts} labeled "
        f"cases; {fingerprint['cases']['unlabeled']} unlabeled in every fold), so any "
        "data.fold fits",
    )
