"""Whole-volume evaluation of one or more models, shared by validation, test and the ``test``
command: predict each volume (slice-wise at the training size, or by sliding window in 3-D),
score it per class, and summarise over volumes.

Two ways to score a volume, chosen per round (``reset(distances=...)``):

* with distances (every test, and every ``distances_every``-th validation): the label maps go to
  the host once per volume and ``metrics.case_metrics`` computes Dice, Jaccard, HD95 and ASD;
* without (the other validations): the volume, its reference and every model's probabilities
  and label maps stay on the device; each volume adds a small tensor of overlap counts there,
  and ``summarize`` copies all of them to the host at once and scores them with the same
  arithmetic (``metrics.overlap_case_metrics``). No value is read back per volume.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from segssl.evaluation.inference import (
    as_volume,
    label_map,
    predict_volume_2d,
    predict_volume_3d,
    to_device,
)
from segssl.evaluation.metrics import (
    EMPTY_MASK_POLICY,
    aggregate,
    case_metrics,
    overlap_case_metrics,
)
from segssl.evaluation.overlap_metrics import overlap_counts

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
        distances_every: HD95 / ASD at every k-th validation (``distances_due``); 0 or ``None``
            never during validation (Dice on the device only). Tests always compute them.
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
        distances_every: int | None = 0,
    ) -> None:
        if mode not in ("slices", "sliding_window"):
            raise ValueError(f"evaluation.mode={mode!r}: expected 'slices' or 'sliding_window'")
        if mode == "slices" and image_size is None:
            raise ValueError("evaluation.image_size is required for evaluation.mode=slices")
        if mode == "sliding_window" and patch_size is None:
            raise ValueError("evaluation.patch_size is required for evaluation.mode=sliding_window")
        every = 0 if distances_every is None else distances_every
        if isinstance(every, bool) or not isinstance(every, int | np.integer) or every < 0:
            raise ValueError(
                f"evaluation.distances_every={distances_every!r}: expected 0 or null (HD95/ASD "
                "never during validation) or a positive int k (at every k-th validation)"
            )
        self.distances_every = int(every)
        self.num_classes, self.class_names = num_classes, list(class_names)
        self.mode, self.image_size, self.batch_size = mode, image_size, batch_size
        self.patch_size, self.stride = patch_size, stride
        self.threshold, self.use_spacing = threshold, use_spacing
        self.reset()

    def reset(self, distances: bool = True) -> None:
        """Start a round of volumes; ``distances``: score HD95 / ASD on the host (tests, and
        validations that ``distances_due``), else Dice and Jaccard from counts on the device."""
        self._cases: list[dict[str, Any]] = []
        self.distances = bool(distances)

    def distances_due(self, validation: int) -> bool:
        """Whether validation number ``validation`` (1, 2, ... of this fit) computes HD95 / ASD:
        every ``distances_every``-th one; never when ``distances_every`` is 0."""
        every = self.distances_every
        return every > 0 and validation > 0 and validation % every == 0

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
            # validation only (tests always compute HD95/ASD): 0 = Dice only, on the device
            "val_distances_every": self.distances_every,
        }

    def predict(
        self,
        predict_fn: PredictFn,
        image: Any,
        device: torch.device,
        output_device: torch.device | str | None = "cpu",
    ) -> torch.Tensor:
        """Class probabilities (C, *image.shape) of one whole volume, on ``output_device``
        (slice-wise inference; ``None``: on ``device``). Sliding windows always give them on
        the CPU, where their full-size sum is kept."""
        if self.mode == "slices":
            return predict_volume_2d(
                predict_fn,
                image,
                self.image_size,
                self.batch_size,
                device=device,
                output_device=output_device,
            )
        return predict_volume_3d(
            predict_fn,
            image,
            self.patch_size,
            stride=self.stride,
            batch_size=self.batch_size,
            device=device,
        )

    def scoring_device(self, device: torch.device | str) -> torch.device:
        """Where a volume's label maps are made and counted: the network's device for slice-wise
        inference, the CPU for sliding windows (whose probabilities are summed there)."""
        return torch.device(device) if self.mode == "slices" else torch.device("cpu")

    def reference(self, label: Any, device: torch.device | str) -> torch.Tensor:
        """The reference label map on ``device``, moved once per volume; its values are checked
        against ``num_classes`` on the host first (a device check would read back)."""
        if isinstance(label, torch.Tensor) and label.device.type != "cpu":
            return label.to(device)  # already moved (and checked) by the caller
        host = label.numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
        if host.dtype == bool:
            host = host.astype(np.uint8)
        if not np.issubdtype(host.dtype, np.integer):
            raise ValueError(f"label: expected an integer label map, got dtype {host.dtype}")
        if host.size and (host.min() < 0 or host.max() >= self.num_classes):
            raise ValueError(
                f"label: expected values in [0, {self.num_classes - 1}] for num_classes="
                f"{self.num_classes}, got range [{host.min()}, {host.max()}]"
            )
        return to_device(torch.as_tensor(host), device)

    def add_case(
        self,
        predict_fns: Mapping[str, PredictFn],
        sample: Mapping[str, Any],
        device: torch.device,
        ensembles: Mapping[str, Sequence[str]] | None = None,
        observe: Callable[[Mapping[str, torch.Tensor]], None] | None = None,
    ) -> dict[str, dict] | None:
        """Score one volume for every model. An ensemble is the mean of its members'
        probabilities, computed from theirs rather than by running the networks again.
        ``observe`` gets every model's label map of the volume (uint8 tensors on
        ``scoring_device``), for metrics that compare models (the error consensus) without
        predicting twice.

        Returns each model's metrics of the volume when this round computes distances; None
        in a round without (the counts stay on the device until ``summarize``)."""
        where = self.scoring_device(device)
        image = sample["image"]
        if self.mode == "slices":  # one copy of the volume for all the models
            image = to_device(as_volume(image), device)
        probs = {
            name: self.predict(fn, image, device, output_device=where)
            for name, fn in predict_fns.items()
        }
        for name, members in (ensembles or {}).items():
            probs[name] = torch.stack([probs[m] for m in members]).mean(0)
        labels = {name: label_map(p, self.threshold) for name, p in probs.items()}
        del probs
        if observe is not None:
            observe(labels)
        spacing = sample.get("spacing") if self.use_spacing else None
        case = {"case": sample["case"], "mm": spacing is not None}
        if not self.distances:
            reference = self.reference(sample["label"], where)
            counts = [overlap_counts(m, reference, self.num_classes) for m in labels.values()]
            self._cases.append({**case, "names": list(labels), "counts": torch.stack(counts)})
            return None
        reference = sample["label"]
        if isinstance(reference, torch.Tensor):
            reference = reference.cpu()
        per_model = {
            name: case_metrics(
                labels[name].cpu(),
                reference,
                self.num_classes,
                spacing=spacing,
                class_names=self.class_names,
            )
            for name in labels
        }
        self._cases.append({**case, "models": per_model})
        return per_model

    def _score_counts(self) -> None:
        """Score the cases counted on the device: their counts come to the host in one copy."""
        pending = [c for c in self._cases if "counts" in c]
        if not pending:
            return
        table = torch.stack([c.pop("counts") for c in pending]).cpu().numpy()
        for case, counts in zip(pending, table, strict=True):
            names = case.pop("names")
            case["models"] = {
                name: overlap_case_metrics(model_counts, self.num_classes, self.class_names)
                for name, model_counts in zip(names, counts, strict=True)
            }

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
        self._score_counts()
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
