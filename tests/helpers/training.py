"""A bare Lightning trainer for tests that fit a method for a few steps and look only at the
training steps (no validation, logger, checkpoints, bar or summary)."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl


def training_only_trainer(steps: int, **options: Any) -> pl.Trainer:
    """``steps`` training steps on the CPU; ``options`` go to ``pl.Trainer`` (e.g. callbacks)."""
    return pl.Trainer(
        max_steps=steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        **options,
    )
