"""Which checkpoints of a finished fit are tested, and testing them: the one selected on
validation (the next-best when the best no longer reads back, the last when validation never
ran) and the last one, each under its own label, written to the run's results.json."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytorch_lightning as pl

from segssl.runs.results import save_evaluation
from segssl.utils.checkpoint_io import RunCheckpoint

if TYPE_CHECKING:  # annotations only: runs/ imports no method or data module at run time
    from segssl.data.datamodule import SemiSupervisedDataModule
    from segssl.methods.base import SegmentationMethod

log = logging.getLogger(__name__)


def evaluate_best(
    trainer: pl.Trainer,
    method: SegmentationMethod,
    datamodule: SemiSupervisedDataModule,
    output_dir: Path,
    config: dict[str, Any],
    training: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Test the checkpoint selected on validation and the last one, each under its own label
    (``test/best/...``, ``test/last/...``); write results.json and the per-case CSVs. The
    selected one (best, or last when no validation ran) is the run's headline result."""
    checkpoint, selection = best_checkpoint(trainer)
    tested = {} if selection.startswith("last") else {"best": (checkpoint, selection)}
    last = last_checkpoint(trainer)
    if last:
        why = "no validation ran: the last checkpoint is the only one" if not tested else "last"
        tested["last"] = (last, why)
    split = datamodule.resolve_test_split()
    stage = "test" if split == datamodule.test_split else "test_on_val"
    evaluations: dict[str, dict[str, Any]] = {}
    for label, (path, why) in tested.items():
        method.evaluation_stage = f"{stage}/{label}"
        trainer.test(method, datamodule=datamodule, ckpt_path=path, verbose=False)
        summary = method.evaluation_results[method.evaluation_stage]
        evaluations[label] = {"checkpoint": path, "selection": why, "summary": summary}
    selected = evaluations["best" if "best" in evaluations else "last"]
    save_evaluation(
        output_dir,
        selected["summary"],
        split=split,
        checkpoint=selected["checkpoint"],
        config=config,
        extra=_extra(selection, training),
        evaluations=evaluations,
    )
    return selected["summary"]


def _extra(selection: str, training: dict[str, Any] | None) -> dict[str, Any] | None:
    extra: dict[str, Any] = {}
    if selection.startswith("next-best"):  # said only when a damaged best was skipped
        extra["selection"] = selection
    if training:
        extra["training"] = training
    return extra or None


def last_checkpoint(trainer: pl.Trainer) -> str | None:
    """``last.ckpt`` of the run (written at every validation and at the end of training)."""
    for callback in trainer.checkpoint_callbacks:
        last = getattr(callback, "last_model_path", "")
        if last and Path(last).is_file():
            return last
    return None


def best_checkpoint(trainer: pl.Trainer) -> tuple[str, str]:
    """The checkpoint chosen on validation and how it was chosen; a best checkpoint that no
    longer reads back is dropped (with a warning) for the next-best; the last one if
    validation never ran."""
    monitored = [c for c in trainer.checkpoint_callbacks if getattr(c, "monitor", None)]
    callback = monitored[0] if monitored else trainer.checkpoint_callback
    if isinstance(callback, RunCheckpoint):
        best = callback.readable_best()
        better = callback.dropped_better_than(best) if best else []
        if better:
            names = ", ".join(Path(p).name for p in better)
            return best, f"next-best on validation (the better {names} does not read back)"
    else:
        best = getattr(callback, "best_model_path", "") if callback else ""
    if best:
        return best, "best on validation"
    last = getattr(callback, "last_model_path", "") if callback else ""
    if last and Path(last).is_file():
        log.warning("No validation ran before the end of training: testing the last checkpoint.")
        return last, "last (no validation ran)"
    raise RuntimeError("no checkpoint was saved; is callbacks.model_checkpoint disabled?")
