"""Build callbacks and loggers from their config groups (one entry per named node)."""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig

from segssl.utils.loggers import start_loggers


def instantiate_loggers(cfg: DictConfig | None, wandb_id: str | None = None) -> list:
    """Loggers by name; ``wandb_id`` continues an earlier W&B run (resume)."""
    if not cfg:
        return []
    loggers = []
    for node in cfg.values():
        if node is None:
            continue
        is_wandb = str(node.get("_target_", "")).endswith("wandb_logger")
        extra = {"id": wandb_id, "resume": "allow"} if is_wandb and wandb_id else {}
        loggers.append(instantiate(node, **extra))
    return start_loggers(loggers)


def instantiate_callbacks(
    cfg: DictConfig | None, with_logger: bool, with_progress_bar: bool = True
) -> list:
    """Callbacks by name; those that need a logger (lr_monitor) are skipped with logger=none,
    the progress bar with trainer.enable_progress_bar=false."""
    if not cfg:
        return []
    skipped = set()
    if not with_logger:
        skipped.add("lr_monitor")
    if not with_progress_bar:
        skipped.add("progress_bar")
    return [
        instantiate(node) for name, node in cfg.items() if node is not None and name not in skipped
    ]
