"""Whole-volume evaluation of one or more models, shared by validation, test and the ``test``
command: predict each volume (slice-wise at the training size, or by sliding window in 3-D),
score it per class, and summarise over volumes."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from segssl.evaluation.inference import predict_volume_2d, predict_volume_3d, probs_to_labels
from segssl.evaluation.metrics import EMPTY_MASK_POLICY, aggregate, case_metrics

PredictFn = Callable[[torch.Tensor], torch.Tensor]


class VolumeEvaluator:
    """Accumulates per-volume metrics for several models; ``summarize`` reduces across ranks.

    Args:
        num_classes: number of classes including background.
        class_names: foreground class names, in label order.
        mode: ``slices`` (2-D networks: each slice resized to ``image_size``, predicted, resized
            back) or ``sliding_window`` (3-D networks: overlapping ``patch_size`` windows).
        image_size: slice side the network was trained on (required for ``slices``).
        batch_size: slices or windows per network call.
        patch_size: window size (required for ``sliding_window``).
        stride: step between windows in voxels; ``None`` overlaps windows by half.
        threshold: foreground where its probability exceeds this (binary tasks); ``None`` takes
            the argmax over classes.
        use_spacing: HD95 / ASD in mm when a volume carries a spacing (else in voxels).
    """

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str],
        mode: str = "slices",
        image_size: int | Sequence[int] | None = None,
        batch_size: int = 32,
        patch_size: Sequence[int] | None = None,
        stride: Sequence[int] | None = None,
        threshold: float | None = None,
        use_spacing: bool = True,
    ) -> None:
        if mode not in ("slices", "sliding_window"):
            raise ValueError(f"evaluation.mode={mode!r}: expected 'slices' or 'sliding_window'")
        if mode == "slices" and image_size is None:
            raise ValueError("evaluation.image_size is required for evaluation.mode=slices")
        if mode == "sliding_window" and patch_size is None:
            raise ValueError("evaluation.patch_size is required for evaluation.mode=sliding_window")
        self.num_classes, self.class_names = num_classes, list(class_names)
        self.mode, self.image_size, self.batch_size = mode, image_size, batch_size
        self.patch_size, self.stride = patch_size, stride
        self.threshold, self.use_spacing = threshold, use_spacing
        self.reset()

    def reset(self) -> None:
        self._cases: list[dict[str, Any]] = []

    def protocol(self) -> dict[str, Any]:
        """What a reader of the results needs to know about how they were computed."""
        inference = (
            {"inference": "slice-wise", "image_size": self.image_size}
            if self.mode == "slices"
            else {
                "inference": "sliding-window",
                "patch_size": self.patch_size,
                "stride": self.stride,
            }
        )
        return {
            **inference,
            "empty_mask_policy": EMPTY_MASK_POLICY,
            "distance_units": self._units(),
            "threshold": self.threshold,
        }

    def predict(self, predict_fn: PredictFn, image: Any, device: torch.device) -> torch.Tensor:
        """Class probabilities (C, *image.shape) of one whole volume."""
        if self.mode == "slices":
            return predict_volume_2d(
                predict_fn, image, self.image_size, self.batch_size, device=device
            )
        return predict_volume_3d(
            predict_fn,
            image,
            self.patch_size,
            stride=self.stride,
            batch_size=self.batch_size,
            device=device,
        )

    def add_case(
        self,
        predict_fns: Mapping[str, PredictFn],
        sample: Mapping[str, Any],
        device: torch.device,
        ensembles: Mapping[str, Sequence[str]] | None = None,
        observe: Callable[[Mapping[str, np.ndarray]], None] | None = None,
    ) -> dict[str, dict]:
        """Score one volume for every model. An ensemble is the mean of its members'
        probabilities, computed from theirs rather than by running the networks again.
        ``observe`` gets every model's label map of the volume, for metrics that compare
        models (the error consensus) without predicting twice."""
        probs = {
            name: self.predict(fn, sample["image"], device) for name, fn in predict_fns.items()
        }
        for name, members in (ensembles or {}).items():
            probs[name] = torch.stack([probs[m] for m in members]).mean(0)
        labels = {name: probs_to_labels(p, self.threshold) for name, p in probs.items()}
        if observe is not None:
            observe(labels)
        spacing = sample.get("spacing") if self.use_spacing else None
        per_model = {
            name: case_metrics(
                labels[name],
                sample["label"],
                self.num_classes,
                spacing=spacing,
                class_names=self.class_names,
            )
            for name in probs
        }
        self._cases.append({"case": sample["case"], "mm": spacing is not None, "models": per_model})
        return per_model

    def _units(self) -> str:
        flags = {c["mm"] for c in self._cases}
        return {frozenset({True}): "mm", frozenset({False}): "voxels"}.get(
            frozenset(flags), "mixed" if flags else "unknown"
        )

    def _gather(self) -> list[dict[str, Any]]:
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return list(self._cases)
        parts: list[list[dict[str, Any]]] = [[] for _ in range(dist.get_world_size())]
        dist.all_gather_object(parts, self._cases)
        unique = {c["case"]: c for part in parts for c in part}  # samplers may pad with repeats
        return [unique[k] for k in sorted(unique)]

    def summarize(self) -> dict[str, Any]:
        """``{"models": {name: aggregate}, "rows": per-volume rows, "protocol": ...}``."""
        self._cases = self._gather()
        if not self._cases:
            return {"models": {}, "rows": [], "protocol": self.protocol()}
        names = list(self._cases[0]["models"])
        models = {n: aggregate([c["models"][n] for c in self._cases]) for n in names}
        rows = [
            {"model": n, "case": c["case"], "class": cls, **values}
            for c in self._cases
            for n in names
            for cls, values in c["models"][n].items()
        ]
        return {"models": models, "rows": rows, "protocol": self.protocol()}
