"""Build callbacks and loggers from their config groups (one entry per named node)."""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig

from segssl.utils.loggers import start_loggers


def instantiate_loggers(cfg: DictConfig | None) -> list:
    if not cfg:
        return []
    return start_loggers([instantiate(node) for node in cfg.values() if node is not None])


def instantiate_callbacks(cfg: DictConfig | None, with_logger: bool) -> list:
    """Callbacks by name; those that need a logger (lr_monitor) are skipped with logger=none."""
    if not cfg:
        return []
    needs_logger = {"lr_monitor"}
    return [
        instantiate(node)
        for name, node in cfg.items()
        if node is not None and (with_logger or name not in needs_logger)
    ]
