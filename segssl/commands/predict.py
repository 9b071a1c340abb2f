"""The ``predict`` command: label maps for new images from a checkpoint alone.

Each mask is named like its input (nnU-Net's convention: ``case_0000.nii.gz`` gives
``case.nii.gz``) in an output folder of its own; a 2-D PNG mask keeps class indices as its
values and gets a colour overlay in ``overlays/`` to look at.

The method, networks and inference protocol come from the checkpoint (its stored config names
the class; no data paths are needed, so a checkpoint from another machine works). How a file
becomes model input follows the training data's layout (``Layout.input_protocol``); docs/predict.md
has the table.

A folder with an unreadable input is handled as batch tools (nnU-Net, MONAI bundles) are used:
every other input is still predicted, ``predictions.json`` says ``"status": "partial"`` and
lists each failed input with its reason, and the command then fails (non-zero exit) naming
them. When no input can be predicted nothing is written and the error is raised as it is.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from segssl.data.image_io import (
    InputImage,
    InputProtocol,
    image_kind,
    list_inputs,
    read_input,
    write_labels,
)
from segssl.data.layouts import LAYOUTS
from segssl.data.readers import DataError
from segssl.evaluation.inference import ensemble_predict_fn, probs_to_labels
from segssl.methods.base import PredictFn, SegmentationMethod
from segssl.methods.from_checkpoint import build_method, read_checkpoint
from segssl.runs.settings_check import SettingsError
from segssl.utils.atomic import WriteError, atomic_path, write_text

log = logging.getLogger(__name__)

MANIFEST = "predictions.json"
# colour overlays of 2-D PNG masks, in a folder of their own so the output folder holds masks only
OVERLAYS = "overlays"
OVERLAY_SUFFIX = "_overlay.png"
# nnU-Net names a case's single-channel image <case>_0000.nii.gz and its mask <case>.nii.gz
NNUNET_CHANNEL = "_0000"
# class colours of the overlays (class 1 first; repeated past the tenth), alpha-blended
OVERLAY_COLOURS = np.array(
    [
        (230, 25, 75),
        (60, 180, 75),
        (0, 130, 200),
        (255, 225, 25),
        (245, 130, 48),
        (145, 30, 180),
        (70, 240, 240),
        (240, 50, 230),
        (210, 245, 60),
        (250, 190, 190),
    ],
    dtype=np.float64,
)
OVERLAY_ALPHA = 0.45


class PartialPredictionError(RuntimeError):
    """Some inputs could not be predicted; the others were, and ``predictions.json`` says which."""


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Hydra task of ``python -m segssl predict``. Its run folder (``.hydra/``, the log) is
    written only once every input is read and every output is known to be free."""
    from hydra.core.hydra_config import HydraConfig

    from segssl.runs.hydra_app import accept_run_folder
    from segssl.runs.lock import RunLock, refuse_reuse

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    refuse_reuse(run_dir, "predict")  # before the lock: a run's stale lock stays as it is
    with RunLock(run_dir):
        refuse_reuse(run_dir, "predict")
        inputs = cfg.input
        if OmegaConf.is_config(inputs):
            inputs = list(OmegaConf.to_container(inputs))
        axes = cfg.get("axes")
        return predict_files(
            cfg.ckpt_path,
            inputs,
            cfg.output,
            model=cfg.get("model_name"),
            normalize=cfg.get("normalize"),
            axes=None if axes is None else [int(a) for a in axes],
            overwrite=bool(cfg.get("overwrite", False)),
            overlays=bool(cfg.get("overlays", True)),
            device=cfg.get("device", "auto"),
            accepted=accept_run_folder,
        )


def predict_files(
    ckpt_path: str | Path,
    inputs: str | Path | list,
    output_dir: str | Path,
    *,
    model: str | None = None,
    normalize: str | None = None,
    axes: list[int] | None = None,
    overwrite: bool = False,
    overlays: bool = True,
    device: str = "auto",
    accepted: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Predict every input with the checkpoint's ``model`` (default: its selection model), write
    each mask under the input's own name (``mask_name``) and ``predictions.json`` into
    ``output_dir``, which must not be an input's folder; with ``overlays``, a colour overlay
    of each PNG mask in ``output_dir/overlays/``. Returns the manifest. ``accepted`` is called
    once everything is checked, before the first file is written."""
    checkpoint = read_checkpoint(ckpt_path)  # data only, allow-listed before it is built
    run = checkpoint.config
    method = build_method(checkpoint)
    name, predict_fn = model_predict_fn(method, model)
    protocol = input_protocol(run, method, normalize, axes)
    files = list_inputs(inputs)
    out = Path(output_dir).expanduser()
    targets = plan_outputs(files, out, overwrite, overlays)
    if accepted is not None:
        accepted()

    dev = resolve(device)
    method.to(dev).eval()
    items, failed = [], []
    for path, target in zip(files, targets, strict=True):
        try:
            image = read_input(path, protocol)
            probs = method.evaluator.predict(predict_fn, image.volume, dev)
            labels = probs_to_labels(probs, method.evaluator.threshold)
            write_prediction(image, labels, target)
            overlay = overlay_path(target) if overlays and image.kind == "png" else None
            if overlay is not None:
                write_overlay(image, labels, overlay)
        except (WriteError, KeyboardInterrupt):
            raise  # a full disk or read-only output fails every input alike: stop now
        except Exception as err:  # noqa: BLE001 - one bad input must not lose the others
            if len(files) == 1:
                raise
            log.error("%s: not predicted: %s", path, err)
            failed.append({"input": str(path.resolve()), "error": f"{type(err).__name__}: {err}"})
            continue
        log.info("%s -> %s", path, target)
        item = {
            "input": str(path.resolve()),
            "output": str(target.resolve()),
            "format": image.kind,
            "shape": list(image.file_shape),
            "model_axes": list(image.axes),
            "normalize": image.normalize,
        }
        if overlay is not None:
            item["overlay"] = str(overlay.resolve())
        if image.grid_shape is not None:  # resampled to the training spacing, and back
            item["model_shape"] = list(image.volume.shape)
        elif protocol.target_spacing is not None and image.kind != "nifti":
            log.warning(
                "%s: %s files carry no spacing, predicted on their own grid (the model was "
                "trained at %s mm)",
                path,
                image.kind,
                list(protocol.target_spacing),
            )
        items.append(item)
    if not items:
        reasons = "; ".join(f"{f['input']}: {f['error']}" for f in failed)
        raise PartialPredictionError(f"no input could be predicted, nothing written: {reasons}")
    manifest = {
        "checkpoint": str(checkpoint.path),
        "method": run.get("method_name", run["method"]["_target_"]),
        "model": name,
        "inference": {
            k: v
            for k, v in method.evaluator.protocol().items()
            if k not in ("distance_units", "empty_mask_policy")
        },
        "input_protocol": protocol_record(protocol),
        "status": "partial" if failed else "complete",
        "predictions": items,
        "failed": failed,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    print(f"{len(items)} prediction(s) by {name} written to {out}", flush=True)
    if failed:
        names = ", ".join(Path(f["input"]).name for f in failed)
        raise PartialPredictionError(
            f"{len(failed)} of {len(files)} inputs could not be predicted ({names}); the other "
            f"{len(items)} were written, and {out / MANIFEST} lists each failure and its reason"
        )
    return manifest


def protocol_record(protocol: InputProtocol) -> dict[str, Any]:
    """The input protocol as ``predictions.json`` records it; ``target_spacing`` and
    ``intensity`` only when the run set them (earlier manifests stay as they were)."""
    record: dict[str, Any] = {
        "dims": protocol.dims,
        "normalize": protocol.normalize,
        "h5_normalize": protocol.h5_normalize,
        "nifti_axes": list(protocol.nifti_axes),
    }
    if protocol.target_spacing is not None:
        record["target_spacing"] = list(protocol.target_spacing)
    if protocol.intensity is not None:
        record["intensity"] = dict(protocol.intensity)
    return record


def write_prediction(image: InputImage, labels: np.ndarray, target: Path) -> None:
    """Write a label map atomically: a failed write leaves no half file. The temporary name keeps
    the target's extension, which nibabel and Pillow read the format from."""
    extension = ".nii.gz" if target.name.endswith(".nii.gz") else target.suffix
    with atomic_path(target, suffix=f".tmp{extension}") as tmp:
        write_labels(image, labels, tmp)


def write_overlay(image: InputImage, labels: np.ndarray, target: Path) -> None:
    """A colour PNG of a 2-D mask over its image, for looking at: the mask itself keeps class
    indices 0..C-1 (nnU-Net's and ITK's convention), which image viewers show as near black.
    The image is shown min-max scaled to grey, each class in its ``OVERLAY_COLOURS`` colour."""
    from PIL import Image

    grey = image.volume[0].astype(np.float64)
    low, high = float(grey.min()), float(grey.max())
    grey = (grey - low) / (high - low) if high > low else np.zeros_like(grey)
    rgb = np.repeat(grey[..., None] * 255.0, 3, axis=-1)
    mask = labels[0]
    for label in np.unique(mask[mask > 0]):
        colour = OVERLAY_COLOURS[(int(label) - 1) % len(OVERLAY_COLOURS)]
        where = mask == label
        rgb[where] = (1 - OVERLAY_ALPHA) * rgb[where] + OVERLAY_ALPHA * colour
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target, suffix=".tmp.png") as tmp:
        Image.fromarray(np.round(rgb).astype(np.uint8), mode="RGB").save(tmp)


def model_predict_fn(method: SegmentationMethod, model: str | None) -> tuple[str, PredictFn]:
    """The named model's probabilities: a network, or an ensemble of the method's networks."""
    fns, ensembles = method.predict_fns(), method.ensembles()
    name = model or method.selection_model
    if name in ensembles:
        return name, ensemble_predict_fn(*(fns[m] for m in ensembles[name]))
    if name in fns:
        return name, fns[name]
    raise SettingsError(
        f"model_name={name!r}: this checkpoint's {type(method).__name__} has the models "
        f"{sorted([*fns, *ensembles])}"
    )


def input_protocol(
    run: dict[str, Any],
    method: SegmentationMethod,
    normalize: str | None = None,
    axes: list[int] | None = None,
) -> InputProtocol:
    """Model input as the training data was read: its layout's ``input_protocol``
    (``data.layout`` and ``data.layout_options`` of the run) for the model's dimensions.
    ``normalize`` and ``axes`` (NIfTI axes taken as D, H, W) override what it gives; a layout
    this version does not know needs both."""
    data = run.get("data") or {}
    layout = data.get("layout", "ssl4mis")
    dims = 2 if method.evaluator.mode == "slices" else 3
    if layout in LAYOUTS:
        protocol = LAYOUTS[layout].input_protocol(data.get("layout_options") or {}, dims)
    elif normalize is None or axes is None:
        raise ValueError(
            f"the checkpoint's data.layout={layout!r} has no known input protocol; give "
            f"normalize=minmax|zscore|none and axes=[d,h,w] (NIfTI axes as the model's D, H, W)"
        )
    else:
        protocol = InputProtocol(dims, normalize, normalize, (0, 1, 2))
    return replace(
        protocol,
        normalize=normalize or protocol.normalize,
        h5_normalize=normalize or protocol.h5_normalize,
        nifti_axes=tuple(axes) if axes is not None else protocol.nifti_axes,
    )


def mask_name(path: Path) -> str:
    """The mask's file name: the input's own (``case.nii.gz`` -> ``case.nii.gz``), as nnU-Net
    names its predictions; nnU-Net's channel suffix is dropped (``case_0000.nii.gz`` ->
    ``case.nii.gz``, the name of the case's mask in ``labelsTr``)."""
    name = path.name
    if image_kind(path) == "nifti":
        suffix = ".nii.gz" if name.lower().endswith(".nii.gz") else ".nii"
        stem = name[: -len(suffix)]
        if stem.endswith(NNUNET_CHANNEL) and len(stem) > len(NNUNET_CHANNEL):
            return stem[: -len(NNUNET_CHANNEL)] + name[-len(suffix) :]
    return name


def overlay_path(target: Path) -> Path:
    """Where the colour overlay of the PNG mask ``target`` goes."""
    return target.parent / OVERLAYS / f"{target.stem}{OVERLAY_SUFFIX}"


def plan_outputs(
    files: list[Path], out: Path, overwrite: bool, overlays: bool = False
) -> list[Path]:
    """Output paths, refusing an output folder that holds inputs (a mask carries its input's
    name, so it would replace it), name clashes and (unless ``overwrite``) existing files."""
    folders = {p.resolve().parent for p in files}
    if out.resolve() in folders:
        raise SettingsError(
            f"output={out}: this folder holds the inputs, and each mask is named like its input; "
            "give output=DIR, a folder of its own (e.g. output=masks)"
        )
    targets = [out / mask_name(p) for p in files]
    seen: dict[Path, Path] = {}
    for path, target in zip(files, targets, strict=True):
        if target in seen:
            raise DataError(
                f"inputs {seen[target]} and {path} would both write {target}; predict them into "
                "separate output folders"
            )
        seen[target] = path
    extra = [out / MANIFEST]
    if overlays:
        extra += [overlay_path(t) for t in targets if image_kind(t) == "png"]
    existing = [t for t in [*targets, *extra] if t.exists()]
    if existing and not overwrite:
        shown = ", ".join(str(p) for p in existing[:5])
        more = f" and {len(existing) - 5} more" if len(existing) > 5 else ""
        raise FileExistsError(
            f"output files exist: {shown}{more}; pass overwrite=true to replace them, or give "
            "another output=DIR"
        )
    return targets


def resolve(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
