"""The ``predict`` command: label maps for new images from a checkpoint alone.

The method, networks and inference protocol come from the checkpoint (its stored config names
the class; no data paths are needed, so a checkpoint from another machine works). How a file
becomes model input follows the training data's layout (``input_protocol``); README
"Predicting masks" has the table.

A folder with an unreadable input is handled as batch tools (nnU-Net, MONAI bundles) are used:
every other input is still predicted, ``predictions.json`` says ``"status": "partial"`` and
lists each failed input with its reason, and the command then fails (non-zero exit) naming
them. When no input can be predicted nothing is written and the error is raised as it is.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from segssl.data.image_io import (
    InputImage,
    InputProtocol,
    list_inputs,
    output_name,
    read_input,
    write_labels,
)
from segssl.evaluation.checkpoints import build_method, read_checkpoint
from segssl.evaluation.inference import ensemble_predict_fn, probs_to_labels
from segssl.methods.base import PredictFn, SegmentationMethod
from segssl.utils.atomic import WriteError, atomic_path, write_text

log = logging.getLogger(__name__)

MANIFEST = "predictions.json"


class PartialPredictionError(RuntimeError):
    """Some inputs could not be predicted; the others were, and ``predictions.json`` says which."""


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Hydra task of ``python -m segssl predict``. Its run folder (``.hydra/``, the log) is
    written only once every input is read and every output is known to be free."""
    from hydra.core.hydra_config import HydraConfig

    from segssl.commands.hydra_app import accept_run_folder
    from segssl.utils.run_lock import RunLock, refuse_reuse

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
    device: str = "auto",
    accepted: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Predict every input with the checkpoint's ``model`` (default: its selection model), write
    ``<name>_pred.*`` and ``predictions.json`` into ``output_dir``; return that manifest.
    ``accepted`` is called once everything is checked, before the first file is written."""
    checkpoint = read_checkpoint(ckpt_path)  # data only, allow-listed before it is built
    run = checkpoint.config
    method = build_method(checkpoint)
    name, predict_fn = model_predict_fn(method, model)
    protocol = input_protocol(run, method, normalize, axes)
    files = list_inputs(inputs)
    out = Path(output_dir).expanduser()
    targets = plan_outputs(files, out, overwrite)
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


def model_predict_fn(method: SegmentationMethod, model: str | None) -> tuple[str, PredictFn]:
    """The named model's probabilities: a network, or an ensemble of the method's networks."""
    fns, ensembles = method.predict_fns(), method.ensembles()
    name = model or method.selection_model
    if name in ensembles:
        return name, ensemble_predict_fn(*(fns[m] for m in ensembles[name]))
    if name in fns:
        return name, fns[name]
    raise ValueError(
        f"model_name={name!r}: this checkpoint's {type(method).__name__} has the models "
        f"{sorted([*fns, *ensembles])}"
    )


def input_protocol(
    run: dict[str, Any],
    method: SegmentationMethod,
    normalize: str | None = None,
    axes: list[int] | None = None,
) -> InputProtocol:
    """Model input as the training data was read, by its layout (``data.layout``):

    - ``ssl4mis`` (ACDC, synthetic): min-max to [0, 1] per volume; NIfTI (x, y, z) is read as
      (z, y, x), slices along z, the order of ``prepare_acdc``; h5 volumes (D, H, W) as stored.
    - ``uamt`` (LA): z-score per volume; NIfTI and h5 axes as they are (UA-MT's (H, W, D)).
    - ``folder``: its ``normalize`` setting (``ct`` with its ``intensity`` numbers); 2-D models
      slice along its ``slice_axis``; NIfTI input is resampled to its ``target_spacing``.

    h5 files of the SSL4MIS and UA-MT layouts are stored already normalised, so they are used
    as stored. ``normalize`` and ``axes`` (NIfTI axes taken as D, H, W) override the defaults.
    """
    data = run.get("data") or {}
    layout = data.get("layout", "ssl4mis")
    options = data.get("layout_options") or {}
    dims = 2 if method.evaluator.mode == "slices" else 3
    defaults = {
        "ssl4mis": ("minmax", "none", (2, 1, 0)),
        "uamt": ("zscore", "none", (0, 1, 2)),
    }
    target_spacing = intensity = None
    if layout == "folder":
        slice_axis = int(options.get("slice_axis", 2))
        order = (slice_axis, *(a for a in range(3) if a != slice_axis))
        how = options.get("normalize", "zscore")
        defaults["folder"] = (how, how, order)
        target_spacing = options.get("target_spacing")
        intensity = options.get("intensity")
    if layout not in defaults and (normalize is None or axes is None):
        raise ValueError(
            f"the checkpoint's data.layout={layout!r} has no known input protocol; give "
            f"normalize=minmax|zscore|none and axes=[d,h,w] (NIfTI axes as the model's D, H, W)"
        )
    nifti_how, h5_how, order = defaults.get(layout, ("none", "none", (0, 1, 2)))
    if dims == 3:
        order = (0, 1, 2)
    return InputProtocol(
        dims=dims,
        normalize=normalize or nifti_how,
        h5_normalize=normalize or h5_how,
        nifti_axes=tuple(axes) if axes is not None else order,
        target_spacing=target_spacing,
        intensity=intensity,
    )


def plan_outputs(files: list[Path], out: Path, overwrite: bool) -> list[Path]:
    """Output paths, refusing name clashes and (unless ``overwrite``) existing files."""
    targets = [out / output_name(p) for p in files]
    seen: dict[Path, Path] = {}
    for path, target in zip(files, targets, strict=True):
        if target in seen:
            raise ValueError(f"inputs {seen[target]} and {path} would both write {target}")
        seen[target] = path
    existing = [t for t in [*targets, out / MANIFEST] if t.exists()]
    if existing and not overwrite:
        shown = ", ".join(str(p) for p in existing[:5])
        more = f" and {len(existing) - 5} more" if len(existing) > 5 else ""
        raise FileExistsError(
            f"output files exist: {shown}{more}; pass overwrite=true to replace them"
        )
    return targets


def resolve(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
