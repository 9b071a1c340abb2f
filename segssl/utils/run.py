"""Small run-level helpers: resolved config, rank-zero file writing, the results summary."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only

from segssl.evaluation.results import (
    format_results_table,
    read_results,
    write_per_case_csv,
    write_results,
)

log = logging.getLogger(__name__)


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain data with every interpolation resolved (stored with results and
    checkpoints, so a run can be understood and rebuilt without its Hydra context)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)  # type: ignore


@rank_zero_only
def save_evaluation(
    output_dir: Path,
    summary: dict[str, Any],
    *,
    split: str,
    checkpoint: str,
    config: dict[str, Any],
    extra: dict[str, Any] | None = None,
    evaluations: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """Write results.json and per_case.csv into ``output_dir`` and print the table.

    ``evaluations`` (label -> {checkpoint, selection, summary}) are the checkpoints tested by
    ``train``: each is stored under its label in results.json, and its per-volume rows in
    ``per_case_<label>.csv`` (``per_case.csv`` stays the selected checkpoint's). The summary's
    ``selection_model`` (the method's) is stored as the top-level key of that name."""
    path = output_dir / "results.json"
    stored = None
    if evaluations:
        stored = {
            label: {
                "checkpoint": str(e["checkpoint"]),
                "selection": e["selection"],
                "models": e["summary"]["models"],
            }
            for label, e in evaluations.items()
        }
    write_results(
        path,
        split=split,
        checkpoint=checkpoint,
        protocol=summary["protocol"],
        models=summary["models"],
        config=config,
        extra=extra,
        evaluations=stored,
        # set by the method (``SegmentationMethod._log_evaluation``): the report reads it
        selection_model=summary.get("selection_model"),
    )
    write_per_case_csv(output_dir / "per_case.csv", summary["rows"])
    for label, evaluation in (evaluations or {}).items():
        write_per_case_csv(output_dir / f"per_case_{label}.csv", evaluation["summary"]["rows"])
    table = format_results_table(read_results(path))
    print(table, flush=True)
    for label, evaluation in (evaluations or {}).items():
        if evaluation["checkpoint"] != checkpoint:
            print(f"{label} checkpoint ({Path(evaluation['checkpoint']).name}):", flush=True)
            print(format_results_table({**read_results(path), **stored[label]}), flush=True)
    log.info("Results written to %s", path)
    return path
