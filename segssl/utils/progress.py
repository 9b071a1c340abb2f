"""A progress bar for step-based training: the run is ``trainer.max_steps`` long, not an epoch.

Lightning's bar counts the batches of an epoch ("Epoch 10: 50% 10/20"), whose length changes
with the data and says nothing of the run. This one counts the global step out of
``max_steps``, with seconds per step, the time left for the whole run (validation included,
since it is measured over the wall clock) and the latest validation Dice. It names the run folder
before anything else happens. In a log file (no terminal) it writes one line every
``line_every`` steps instead of redrawing bars.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.callbacks.progress.tqdm_progress import Tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

log = logging.getLogger(__name__)

# lines a run in a log file writes, when line_every is not given
LINES_PER_RUN = 20


def format_seconds(seconds: float) -> str:
    """``1:02:03`` / ``2:03``: hours only when there are any."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_text(
    step: int,
    max_steps: int,
    seconds_per_step: float | None,
    metrics: dict[str, Any],
) -> str:
    """``step 120/200 (60%) | 0.52 s/step | 0:41 left | train/loss 0.413 | val/dice 0.721``:
    what a log line and the bar's postfix say."""
    parts = [f"step {step}/{max_steps} ({100 * step / max_steps:.0f}%)" if max_steps > 0 else ""]
    if seconds_per_step is not None:
        parts.append(f"{seconds_per_step:.3g} s/step")
        if max_steps > 0:
            parts.append(f"{format_seconds(seconds_per_step * (max_steps - step))} left")
    for key, value in metrics.items():
        value = value.item() if hasattr(value, "item") else value
        parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
    return " | ".join(p for p in parts if p)


class RunTqdm(Tqdm):
    """A tqdm bar with a ``status`` field for the bar format (tqdm's own ``postfix`` always
    starts with a comma)."""

    status = ""

    @property
    def format_dict(self) -> dict[str, Any]:
        return {**super().format_dict, "status": self.status}


class StepProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, counting global steps of the whole run (see the module doc).

    ``refresh_rate``: steps between redraws (a redraw reads logged tensors: a device sync).
    ``line_every``: steps between lines when the output is not a terminal (default: about
    ``LINES_PER_RUN`` lines over the run, never more often than ``refresh_rate``).
    ``terminal``: force bars (True) or lines (False); default: bars on a terminal.
    """

    # the training bar (the validation and test bars keep Lightning's BAR_FORMAT)
    RUN_BAR_FORMAT = "{desc} {n_fmt}/{total_fmt} {percentage:3.0f}%|{bar}| {status}"

    def __init__(
        self,
        refresh_rate: int = 10,
        process_position: int = 0,
        leave: bool = False,
        line_every: int | None = None,
        terminal: bool | None = None,
    ) -> None:
        super().__init__(refresh_rate=refresh_rate, process_position=process_position, leave=leave)
        self.line_every = line_every
        self.terminal = terminal
        self._start_time: float | None = None
        self._start_step = 0
        self._last_line_step: int | None = None
        self._redirect: Any = None  # log lines printed above the bar while it is drawn

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "_redirect": None}

    # -- what is shown ----------------------------------------------------------------------
    @property
    def uses_bars(self) -> bool:
        """Bars on a terminal; lines in a log file (redrawn bars there are noise)."""
        return sys.stdout.isatty() if self.terminal is None else self.terminal

    def seconds_per_step(self, step: int) -> float | None:
        """Wall-clock seconds per step since this process started training (validation
        included, so the time left is for the whole run), None before the first step."""
        done = step - self._start_step
        if self._start_time is None or done <= 0:
            return None
        return (time.monotonic() - self._start_time) / done

    def shown_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        """The bar's metrics (train/loss, val/dice, ...) without Lightning's ``v_num``."""
        metrics = dict(self.get_metrics(trainer, pl_module))
        metrics.pop("v_num", None)
        return metrics

    def status(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> str:
        step = trainer.global_step
        return progress_text(
            step,
            trainer.max_steps,
            self.seconds_per_step(step),
            self.shown_metrics(trainer, pl_module),
        )

    def _line_interval(self, trainer: pl.Trainer) -> int:
        if self.line_every:
            return max(1, int(self.line_every))
        return max(self.refresh_rate, 1, trainer.max_steps // LINES_PER_RUN)

    # -- Lightning hooks --------------------------------------------------------------------
    def init_train_tqdm(self) -> Tqdm:
        return RunTqdm(
            desc="Training",
            position=2 * self.process_position,
            disable=self.is_disabled or not self.uses_bars,
            leave=True,
            dynamic_ncols=True,
            file=sys.stdout,
            smoothing=0,
            bar_format=self.RUN_BAR_FORMAT,
        )

    def init_validation_tqdm(self) -> Tqdm:
        bar = super().init_validation_tqdm()
        bar.disable = bar.disable or not self.uses_bars
        return bar

    def init_sanity_tqdm(self) -> Tqdm:
        bar = super().init_sanity_tqdm()
        bar.disable = bar.disable or not self.uses_bars
        return bar

    def init_test_tqdm(self) -> Tqdm:
        bar = super().init_test_tqdm()
        bar.disable = bar.disable or not self.uses_bars
        return bar

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Name the run folder before validation, data loading or the first step."""
        super().on_fit_start(trainer, pl_module)
        if trainer.is_global_zero and self.is_enabled:
            log.info("Run folder: %s", trainer.default_root_dir)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._start_time, self._start_step = time.monotonic(), trainer.global_step
        self._last_line_step = trainer.global_step
        if self.uses_bars and self.is_enabled and self._redirect is None:
            # a log line written while the bar is drawn would be glued to it: write it above
            loggers = [logging.root, logging.getLogger("pytorch_lightning")]
            self._redirect = logging_redirect_tqdm(loggers=loggers, tqdm_class=RunTqdm)
            self._redirect.__enter__()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._stop_redirect()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._stop_redirect()

    def _stop_redirect(self) -> None:
        if self._redirect is not None:
            redirect, self._redirect = self._redirect, None
            redirect.__exit__(None, None, None)

    def on_train_epoch_start(self, trainer: pl.Trainer, *_: Any) -> None:
        """Keep one bar for the whole run: total = max_steps, from the step it starts at (a
        resumed run starts where it stopped); Lightning would reset it every epoch."""
        if trainer.max_steps <= 0:  # an epoch-based run: Lightning's bar is the right one
            super().on_train_epoch_start(trainer)
            return
        bar = self.train_progress_bar
        if bar.total != trainer.max_steps:
            bar.reset(total=trainer.max_steps)
            bar.initial = bar.n = trainer.global_step
            bar.set_description("Training")
            if not bar.disable:
                bar.refresh()

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if trainer.max_steps <= 0:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            return
        step = trainer.global_step
        last = step == trainer.max_steps
        bar = self.train_progress_bar
        if not bar.disable and self.is_enabled and (step % self.refresh_rate == 0 or last):
            bar.n = step
            self._show(bar, trainer, pl_module)
        elif bar.disable and self.is_enabled and trainer.is_global_zero:
            previous = self._last_line_step if self._last_line_step is not None else 0
            if step - previous >= self._line_interval(trainer) or (last and step != previous):
                self._last_line_step = step
                log.info("%s", self.status(trainer, pl_module))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """No per-epoch redraw: the run, not the epoch, is what the bar shows."""

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Show the new validation Dice at once, not at the next redraw (a log line shows it
        at its next line)."""
        super().on_validation_end(trainer, pl_module)
        if trainer.sanity_checking or not self.is_enabled:
            return
        bar = self._train_progress_bar
        if bar is not None and not bar.disable:
            self._show(bar, trainer, pl_module)

    def _show(self, bar: Tqdm, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Redraw with the status after the step count (which the bar shows itself)."""
        bar.status = self.status(trainer, pl_module).partition(" | ")[2]
        bar.refresh()
