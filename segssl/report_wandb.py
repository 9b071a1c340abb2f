"""Optional W&B copy of a report: a new run (job_type ``report``) with the table, the summary
metrics and the figure. Offline unless the user logged in; never waits on the network."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from segssl.utils.loggers import wandb_mode

log = logging.getLogger(__name__)
PROJECT = "segssl"


def log_report(
    rows: Sequence[dict[str, Any]],
    figure: Path,
    out_dir: Path,
    *,
    split: str,
    protocol: dict[str, Any],
) -> str:
    """Log the report to a new W&B run saved under ``out_dir``; return its folder."""
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    config = {"split": split, "protocol": protocol, "source": str(out_dir)}
    run = _init(wandb, wandb_mode(), out_dir, config)
    columns = list(rows[0])
    run.log(
        {
            "report/table": wandb.Table(
                columns=columns, data=[[r[c] for c in columns] for r in rows]
            ),
            "report/dice": wandb.Image(str(figure)),
        }
    )
    for row in rows:
        prefix = f"{row['group']}/{row['model']}/{row['class']}"
        for key in ("dice", "jaccard", "hd95", "asd"):
            run.summary[f"{prefix}/{key}_mean"] = row[f"{key}_mean"]
            if row[f"{key}_std"] is not None:
                run.summary[f"{prefix}/{key}_std"] = row[f"{key}_std"]
    folder = str(run.dir)
    run.finish()
    return folder


def _init(wandb: Any, mode: str, out_dir: Path, config: dict[str, Any]) -> Any:
    """Start the run; an online start that fails (no network, bad key) goes offline instead."""
    settings = wandb.Settings(init_timeout=30, silent=True, console="off")
    kwargs = {"project": PROJECT, "job_type": "report", "dir": str(out_dir), "config": config}
    try:
        return wandb.init(mode=mode, settings=settings, **kwargs)
    except Exception as err:  # noqa: BLE001 - W&B being unreachable must not lose the report
        if mode == "offline":
            raise
        log.warning("W&B could not start online (%s); logging the report offline.", err)
        return wandb.init(mode="offline", settings=settings, **kwargs)
