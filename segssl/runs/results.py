"""Small run-level helpers: resolved config, rank-zero file writing, the results summary."""

from __future__ import annotations

import logging
import uuid
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
    ``selection_model`` (the method's) is stored as the top-level key of that name.

    The file names its run, so ``report`` counts each run once: a training run's ``run_id``
    (kept in the run state, so an extension or a copy of the folder keeps it); a ``segssl test``
    re-evaluation (its config holds ``test`` and ``run``) names instead the run whose checkpoint
    it evaluated (``reevaluates``), and is never given an id of its own."""
    path = output_dir / "results.json"
    identity: dict[str, Any]
    if {"test", "run"} <= set(config):
        identity = {"reevaluates": evaluated_run(Path(checkpoint), config["run"])}
    else:
        identity = {"run_id": training_run_id(output_dir)}
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
        **identity,
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


def training_run_id(run_dir: Path) -> str:
    """The run's id from its run state, made (and stored there) by its first evaluation: a
    resume and a copy of the folder keep it, so its results stay one run. A damaged state file
    costs only the link to earlier results, never this result."""
    from segssl.runs.resume import ResumeError, read_run_state, write_run_state

    try:
        found = read_run_state(run_dir).get("run_id")
    except ResumeError as err:
        log.warning("%s; results.json gets a new run id", err)
        return uuid.uuid4().hex
    if isinstance(found, str) and found:
        return found
    run_id = uuid.uuid4().hex
    write_run_state(run_dir, run_id=run_id)
    return run_id


def evaluated_run(checkpoint: Path, run_config: dict[str, Any]) -> dict[str, Any]:
    """The training run a ``segssl test`` re-evaluated: the run folder the checkpoint lies in
    (``RUN/checkpoints/x.ckpt``) with its id when it has one, else the folder the run was
    trained in (its stored ``paths.output_dir``). Read only: nothing of that run is written."""
    from segssl.runs.resume import ResumeError, read_run_state

    checkpoint = checkpoint.expanduser().resolve()
    if checkpoint.parent.name != "checkpoints":
        paths = run_config.get("paths")
        stored = paths.get("output_dir") if isinstance(paths, dict) else None
        return {"run_id": None, "run_dir": stored if isinstance(stored, str) else None}
    run_dir = checkpoint.parent.parent
    try:
        found = read_run_state(run_dir).get("run_id")
    except ResumeError:
        found = None
    return {"run_id": found if isinstance(found, str) and found else None, "run_dir": str(run_dir)}
