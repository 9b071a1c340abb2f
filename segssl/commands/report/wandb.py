"""Optional W&B copy of a report: a new run (job_type ``report``) with the summary table, the
paired comparison table, the summary metrics and the figures. Offline unless the user logged
in; never waits on the network."""

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
    paired: Sequence[dict[str, Any]],
    figures: Sequence[Path],
    out_dir: Path,
    *,
    split: str,
    protocol: dict[str, Any],
    group: str | None = None,
) -> str:
    """Log the report to a new W&B run (job_type ``report``) saved under ``out_dir``, in the
    project and ``group`` of the runs it reports; return its folder."""
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    config = {"split": split, "protocol": protocol, "source": str(out_dir)}
    run = _init(wandb, wandb_mode(), out_dir, config, group)
    logged: dict[str, Any] = {"report/table": _table(wandb, rows)}
    if paired:
        logged["report/paired"] = _table(wandb, paired)
    for figure in figures:
        logged[f"report/{Path(figure).stem}"] = wandb.Image(str(figure))
    run.log(logged)
    for row in rows:
        prefix = "/".join(
            (readable_label(row["group"]), row["checkpoint"], row["model"], row["class"])
        )
        for key in ("dice", "jaccard", "hd95", "asd"):
            run.summary[f"{prefix}/{key}"] = row[f"{key}_mean"]
            if row[f"{key}_std"] is not None:
                run.summary[f"{prefix}/{key}_std"] = row[f"{key}_std"]
    folder = str(run.dir)
    run.finish()
    return folder


def readable_label(label: str) -> str:
    """A report group label as a W&B key part: ``method=dsaif data.labeled=2`` becomes
    ``dsaif-l2`` (method by its name, labeled as ``l<N>``, other keys as ``name=value`` with
    the last part of their key)."""
    parts = []
    for token in str(label).split():
        key, sep, value = token.partition("=")
        if not sep:
            parts.append(token)
            continue
        name = key.rsplit(".", 1)[-1]
        parts.append(value if name == "method" else f"l{value}" if name == "labeled" else
                     f"{name}={value}")  # fmt: skip
    return "-".join(parts) or "all"


def _table(wandb: Any, rows: Sequence[dict[str, Any]]) -> Any:
    """A W&B Table of dict rows (columns: the union, in first-seen order; blanks as None)."""
    columns = list(dict.fromkeys(c for r in rows for c in r))
    return wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])


def _init(
    wandb: Any, mode: str, out_dir: Path, config: dict[str, Any], group: str | None = None
) -> Any:
    """Start the run; an online start that fails (no network, bad key) goes offline instead."""
    settings = wandb.Settings(init_timeout=30, silent=True, console="off")
    kwargs = {"project": PROJECT, "job_type": "report", "dir": str(out_dir), "config": config}
    if group:
        kwargs["group"] = group
    try:
        return wandb.init(mode=mode, settings=settings, **kwargs)
    except Exception as err:  # noqa: BLE001 - W&B being unreachable must not lose the report
        if mode == "offline":
            raise
        log.warning("W&B could not start online (%s); logging the report offline.", err)
        return wandb.init(mode="offline", settings=settings, **kwargs)
