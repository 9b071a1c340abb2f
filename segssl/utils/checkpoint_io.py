"""How checkpoints are written, read back and tracked.

- ``AtomicCheckpointIO`` writes each checkpoint beside its target, reads it back (a CRC check
  of every record) and only then renames it over the target, so a crash, a full disk or a
  damaged write never leaves a corrupt ``last.ckpt``; it loads with ``weights_only=True``.
- ``RunCheckpoint`` is Lightning's ``ModelCheckpoint`` with tracking that belongs to the run
  folder: paths are stored by name (a moved or copied run folder keeps its best checkpoints),
  a tracked checkpoint that no longer reads back is dropped with a warning (the next-best
  stays selectable), and ``last.ckpt`` is written at every validation (unless
  ``last_every_validation=false``: fast GPU runs that resume from a time-based ``latest.ckpt``)."""

from __future__ import annotations

import logging
import os
import zipfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.trainer.states import TrainerFn

from segssl.utils.atomic import atomic_path
from segssl.utils.trust import load_checkpoint

log = logging.getLogger(__name__)


class DamagedCheckpointError(ValueError):
    """A checkpoint file that does not read back completely."""


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a complete checkpoint, or None when every record passes its CRC
    check. Reads the file once without unpickling anything."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except FileNotFoundError:
        return "the file is missing"
    except (OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, ValueError) as err:
        return f"not a complete checkpoint archive ({err})"
    if bad is not None:
        return f"its record {bad!r} fails the CRC check"
    return None


def verify_checkpoint(path: str | os.PathLike) -> None:
    problem = checkpoint_problem(path)
    if problem is not None:
        raise DamagedCheckpointError(f"{path}: damaged checkpoint: {problem}")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Save to a temporary file in the same folder, read it back, then rename over the target;
    load with ``weights_only=True`` (a checkpoint never runs code)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        target = Path(path)
        with atomic_path(target) as tmp:
            torch.save(checkpoint, tmp)
            problem = checkpoint_problem(tmp)
            if problem is not None:
                raise DamagedCheckpointError(
                    f"{target}: the checkpoint just written does not read back ({problem}); "
                    f"the previous file is kept"
                )

    def load_checkpoint(
        self, path: str | os.PathLike, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return load_checkpoint(path)


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose tracking lives in the run folder (see the module docstring)."""

    def __init__(
        self,
        *args: Any,
        train_time_interval: float | timedelta | None = None,
        last_every_validation: bool = True,
        **kwargs: Any,
    ) -> None:
        """``train_time_interval`` may be seconds (a number in a YAML file) or a timedelta.
        ``last_every_validation=false`` keeps ``last.ckpt`` to the end of training (and to
        Lightning's own writes beside a new best), for runs that validate every few seconds
        and resume from a time-based ``latest.ckpt`` instead."""
        if isinstance(train_time_interval, int | float) and not isinstance(
            train_time_interval, bool
        ):
            if train_time_interval <= 0:
                raise ValueError(
                    f"train_time_interval={train_time_interval!r}: expected seconds > 0 or null"
                )
            train_time_interval = timedelta(seconds=train_time_interval)
        super().__init__(*args, train_time_interval=train_time_interval, **kwargs)
        self.last_every_validation = bool(last_every_validation)
        self._last_written_step = -1
        # tracked checkpoints dropped because they no longer read back, with their scores
        self.dropped: dict[str, float] = {}

    @property
    def state_key(self) -> str:
        # the key of Lightning's ModelCheckpoint, so runs checkpointed before this class resume
        return super().state_key.replace(type(self).__qualname__, "ModelCheckpoint", 1)

    # -- tracking by name ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["best_k_models"] = {_name(p): s for p, s in self.best_k_models.items()}
        for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
            state[key] = _name(state.get(key))
        state["dirpath"] = None  # names are relative to wherever the run folder is now
        return state

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Lightning restores callbacks for test too: a checkpoint being tested must not replace
        # what this run tracks (nor warn about top-k files deleted after it was written)
        self._restoring = trainer.state.fn == TrainerFn.FITTING

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Tracked checkpoints by name inside this run's ``checkpoints/``; any that is missing or
        does not read back is dropped now, with a warning naming it. Only when resuming a fit."""
        if not getattr(self, "_restoring", True):
            return
        here = Path(self.dirpath) if self.dirpath else None

        def local(path: Any) -> str:
            return str(here / Path(str(path)).name) if path and here is not None else ""

        if self.monitor is None:
            self.best_model_path = local(state_dict.get("best_model_path"))
        else:
            kept = {}
            for path, score in state_dict.get("best_k_models", {}).items():
                if here is None:
                    break
                candidate = local(path)
                problem = checkpoint_problem(candidate)
                if problem is None:
                    kept[candidate] = score
                else:
                    self._drop(candidate, score, problem)
            self.best_k_models = kept
            self._update_best_from_tracked()
        self.current_score = state_dict.get("current_score")
        self.last_model_path = local(state_dict.get("last_model_path"))
        if not self.last_model_path and self.save_last and here is not None:
            # a checkpoint written before the first last.ckpt (a best one of the first
            # validation, an early latest.ckpt) names none: the run's last.ckpt is still this
            # branch's, so it is overwritten rather than joined by a last-v1.ckpt
            name = self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION
            if "{" not in name:
                self.last_model_path = str(here / name)

    def _update_best_from_tracked(self) -> None:
        """best / k-th best from ``best_k_models`` (after checkpoints were dropped)."""
        if not self.best_k_models:
            self.best_model_path, self.best_model_score = "", None
            self.kth_best_model_path = ""
            self.kth_value = torch.tensor(float("-inf" if self.mode == "max" else "inf"))
            return
        ordered = sorted(
            self.best_k_models,
            key=lambda p: float(self.best_k_models[p]),
            reverse=self.mode == "max",
        )
        self.best_model_path = ordered[0]
        self.best_model_score = self.best_k_models[ordered[0]]
        if len(ordered) >= self.save_top_k > 0:
            self.kth_best_model_path = ordered[-1]
            self.kth_value = self.best_k_models[ordered[-1]]
        else:
            self.kth_best_model_path = ""
            self.kth_value = torch.tensor(float("-inf" if self.mode == "max" else "inf"))

    def readable_best(self) -> str:
        """The best tracked checkpoint that reads back; an unreadable one is dropped with a
        warning and the next-best is taken. "" when none is tracked or none reads back."""
        while self.best_k_models:
            best = self.best_model_path or next(iter(self.best_k_models))
            problem = checkpoint_problem(best)
            if problem is None:
                return best
            self._drop(best, self.best_k_models.pop(best, float("nan")), problem)
            self._update_best_from_tracked()
        return ""

    def _drop(self, path: str, score: Any, problem: str) -> None:
        log.warning("Dropping %s from the best checkpoints: %s", path, problem)
        self.dropped[path] = float(score)

    def dropped_better_than(self, path: str) -> list[str]:
        """Dropped checkpoints that scored better than ``path`` on validation."""
        score = float(self.best_k_models[path])
        better = (lambda s: s > score) if self.mode == "max" else (lambda s: s < score)
        return [p for p, s in self.dropped.items() if better(s)]

    # -- last.ckpt at every validation -----------------------------------------------------
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Lightning writes ``last.ckpt`` only when a top-k checkpoint was written; here it is
        written at every validation, so a killed run resumes from its latest validation."""
        super().on_validation_end(trainer, pl_module)
        fitting = trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking
        if (
            self.save_last
            and self.last_every_validation
            and fitting
            and not trainer.fast_dev_run
            and self._last_written_step != trainer.global_step
        ):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """``last.ckpt`` also holds the final weights when training ends between validations,
        so the "last" checkpoint that ``train`` tests is the end of training."""
        super().on_train_end(trainer, pl_module)
        if self.save_last and not trainer.fast_dev_run:
            if self._last_written_step != trainer.global_step:
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        if self.save_last:
            self._last_written_step = trainer.global_step


def _name(path: Any) -> str:
    return Path(str(path)).name if path else ""
