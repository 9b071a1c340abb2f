"""One run folder and its life: the Hydra wrapper that accepts the folder and finds the configs
(``hydra_app``), its lock (``lock``), resuming it (``resume``), a training run's start in one
call (``run``: ``with prepare_run(cfg) as run:``), which checkpoint is tested (``checkpoints``)
and its results and run ids (``results``). Commands use this package; it imports no command."""

from __future__ import annotations

from typing import Any

__all__ = ["Run", "prepare_run"]


def __getattr__(name: str) -> Any:
    """``Run`` and ``prepare_run`` are loaded when first asked for: importing the package (as
    ``cli`` does before every command) stays free of torch and Lightning."""
    if name in __all__:
        from segssl.runs import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
