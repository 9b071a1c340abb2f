"""The training side of a stop signal (see ``segssl.utils.signals``): finish the training step,
write a resumable checkpoint, stop. A callback of ``conf/callbacks/default.yaml``."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from segssl.utils.signals import (
    RunInterrupted,
    defer_stop,
    install_stop_handlers,
    reset,
    stop_requested,
)


class StopOnSignal(pl.Callback):
    """Makes training atomic with respect to a stop signal (a signal during a training step or
    while its batch loads takes effect when the step ends) and writes a resumable checkpoint
    before the run stops (``resume=RUN`` picks the newest checkpoint). Validation, test and
    everything outside ``fit`` stop at once.

    Args:
        dirpath: folder of the checkpoint (the run's ``checkpoints/``).
        filename: its name without ``.ckpt``; ``latest`` replaces the periodic resumable one.
    """

    def __init__(self, dirpath: str | Path, filename: str = "latest") -> None:
        self.path = Path(dirpath) / f"{filename}.ckpt"
        self._in_validation = False
        self._saved = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        install_stop_handlers()
        reset()
        self._saved = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        defer_stop(True)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        signum = stop_requested()
        stop = signum is not None
        if trainer.world_size > 1:  # every rank stops at the same step, or none does
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            defer_stop(False)
            self._save_and_report(trainer, "after a training step")
            raise RunInterrupted(signum or signal.SIGTERM)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        defer_stop(False)
        signum = stop_requested()
        if signum is not None:  # came after the last step: the final state is resumable
            self._save_and_report(trainer, "at the end of training")
            raise RunInterrupted(signum)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking:
            return
        self._in_validation = True
        defer_stop(False)
        signum = stop_requested()
        if signum is not None:  # came after the step's end hook: stop before validating
            raise RunInterrupted(signum)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._in_validation:
            self._in_validation = False
            defer_stop(True)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        defer_stop(False)
        if not isinstance(exception, RunInterrupted) or self._saved:
            return
        if self._in_validation and trainer.world_size == 1:
            # the weights and optimiser are those of the last finished step; a resumed run
            # trains on from it. Lightning redoes the cut validation only when its loop state
            # says a validation step was running, else that one validation is skipped. Not
            # under DDP: a rank may be waiting in a collective, and saving is one.
            self._save_and_report(trainer, "during validation")
        else:
            rank_zero_info(f"{exception} at step {trainer.global_step}.")

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        defer_stop(False)
        self._in_validation = False

    def _save_and_report(self, trainer: pl.Trainer, when: str) -> None:
        trainer.save_checkpoint(self.path)
        self._saved = True
        run_dir = self.path.parent.parent
        rank_zero_warn(
            f"Stopped by {signal.Signals(stop_requested() or signal.SIGTERM).name} {when}, at step "
            f"{trainer.global_step}; resumable checkpoint {self.path}. "
            f"Continue with: python -m segssl train resume={run_dir}"
        )
