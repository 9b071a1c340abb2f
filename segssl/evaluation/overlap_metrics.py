"""On-device overlap metrics of training and validation, as torchmetrics ``Metric`` objects so
their counts stay on the device between logs and are summed across DDP ranks on ``compute()``.

* ``ForegroundDice``: Dice of a network's label map against the reference, pooled over every
  pixel seen since the last reset, per foreground class, then the mean over classes.
* ``Agreement``: fraction of pixels where two networks' label maps agree.
* ``ErrorConsensus``: Dice overlap of two networks' error masks (pixels where each label map
  differs from the reference), ``2 |E1 & E2| / (|E1| + |E2|)``, pooled over whole volumes. It is
  the quantity DSAIF's views are meant to lower: 1 means the networks make the same mistakes (so
  cross supervision cannot correct them), 0 that they never err on the same pixel.

All three take label maps (argmax or thresholded), not probabilities: they measure the decisions
the evaluation scores. Counts are pooled (sums), never means of per-batch or per-volume ratios.
"""

from __future__ import annotations

import hashlib

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


def _label_maps(name: str, *maps: torch.Tensor) -> list[torch.Tensor]:
    """The maps as int64 tensors of one shape, or an error naming the metric and the shapes."""
    shapes = {tuple(m.shape) for m in maps}
    if len(shapes) != 1:
        raise ValueError(
            f"{name}: expected label maps of one shape, got shapes {[tuple(m.shape) for m in maps]}"
        )
    for m in maps:
        # by dtype only: checking values would read them back from the device every step
        if m.is_floating_point() or m.is_complex():
            raise ValueError(
                f"{name}: expected integer label maps (argmax of the probabilities), "
                f"got dtype {m.dtype}"
            )
    return [m.long() for m in maps]


def overlap_counts(pred: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class intersection, prediction size and reference size, ``(3, num_classes)`` int64
    on the device of the maps: the counts Dice and Jaccard are made of.

    One scatter-add of the (label, pred) pairs into a confusion matrix: no per-class one-hot
    tensors, and no host sync (CUDA bincount and boolean indexing read sizes back). Values
    outside ``0..num_classes-1`` (an ignore index) go to an extra bin that is dropped."""
    c = num_classes
    pred, label = pred.long(), label.long()
    valid = (label >= 0) & (label < c) & (pred >= 0) & (pred < c)
    index = torch.where(valid, label * c + pred, c * c).flatten()
    counts = torch.zeros(c * c + 1, dtype=torch.long, device=index.device)
    counts.scatter_add_(0, index, torch.ones_like(index))
    confusion = counts[:-1].view(c, c)  # [label, pred]
    return torch.stack([confusion.diagonal(), confusion.sum(0), confusion.sum(1)])


class ForegroundDice(Metric):
    """Mean over foreground classes ``1..C-1`` of the pooled Dice ``2 TP / (|P| + |T|)``.

    A class absent from both prediction and reference scores 1, the empty-mask policy of
    ``segssl.evaluation.metrics``.

    Args:
        num_classes: number of classes including background (class 0), at least 2.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, num_classes: int, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_classes < 2:
            raise ValueError(f"ForegroundDice: num_classes must be >= 2, got {num_classes}")
        self.num_classes = num_classes
        for state in ("intersection", "pred_size", "label_size"):
            self.add_state(state, torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        """Add a batch of label maps ``pred`` and references ``label`` (same shape)."""
        pred, label = _label_maps(type(self).__name__, pred, label)
        counts = overlap_counts(pred, label, self.num_classes)
        self.intersection += counts[0]
        self.pred_size += counts[1]
        self.label_size += counts[2]

    def compute(self) -> torch.Tensor:
        total = (self.pred_size + self.label_size)[1:].double()
        dice = torch.where(
            total > 0, 2 * self.intersection[1:] / total.clamp(min=1), torch.ones_like(total)
        )
        return dice.mean().float()


class Agreement(Metric):
    """Fraction of pixels where two label maps agree."""

    full_state_update = False
    higher_is_better = None

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("agree", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred_a: torch.Tensor, pred_b: torch.Tensor) -> None:
        pred_a, pred_b = _label_maps(type(self).__name__, pred_a, pred_b)
        self.agree += (pred_a == pred_b).sum()
        self.total += pred_a.numel()

    def compute(self) -> torch.Tensor:
        return (self.agree.double() / self.total.clamp(min=1)).float()


def case_key(case: str) -> int:
    """A stable 63-bit integer id of a case name (tensors cannot carry strings across ranks)."""
    return int.from_bytes(hashlib.blake2b(case.encode(), digest_size=8).digest(), "big") >> 1


class ErrorConsensus(Metric):
    """Dice overlap of two networks' error masks against the reference, pooled over volumes.

    Counts are kept per volume, keyed by case name, so a volume evaluated twice (Lightning's
    distributed sampler pads the last ranks with repeats) is counted once, as the volume
    evaluator does. When neither network makes any error the consensus is 0: no shared error.
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for state in ("keys", "shared", "errors"):
            self.add_state(state, [], dist_reduce_fx="cat")

    def update(
        self, pred_a: torch.Tensor, pred_b: torch.Tensor, label: torch.Tensor, case: str
    ) -> None:
        """Add one volume (or batch) ``case``: label maps of both networks and the reference."""
        pred_a, pred_b, label = _label_maps(type(self).__name__, pred_a, pred_b, label)
        error_a, error_b = pred_a != label, pred_b != label
        device = label.device
        # a fill on the device, not a copy from the host (which would wait for queued work)
        self.keys.append(torch.full((1,), case_key(case), dtype=torch.long, device=device))
        self.shared.append((error_a & error_b).sum().view(1))
        self.errors.append((error_a.sum() + error_b.sum()).view(1))

    def compute(self) -> torch.Tensor:
        keys = dim_zero_cat(self.keys)
        shared, errors = dim_zero_cat(self.shared), dim_zero_cat(self.errors)
        unique, inverse = torch.unique(keys, return_inverse=True)
        positions = torch.arange(len(keys), device=keys.device)
        first = torch.full_like(unique, len(keys)).scatter_reduce(0, inverse, positions, "amin")
        shared, errors = shared[first].sum(), errors[first].sum()
        return (2 * shared.double() / errors.clamp(min=1)).float()
