"""The ``train`` command: fit a method, then evaluate its best checkpoint and write results.

The run folder's life (refusals, the lock, resuming with ``train resume=RUN_DIR``, the seed) is
``runs/run.py``; which checkpoints are tested is ``runs/checkpoints.py``."""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig

from segssl.data.datamodule import SemiSupervisedDataModule
from segssl.methods.base import SegmentationMethod
from segssl.runs.checkpoints import evaluate_best
from segssl.runs.run import prepare_run
from segssl.runs.settings_check import SettingsError
from segssl.utils.callbacks import StepTimer
from segssl.utils.checkpoint_io import AtomicCheckpointIO, RunCheckpoint
from segssl.utils.instantiate import instantiate_callbacks, instantiate_loggers

log = logging.getLogger(__name__)


def build_data_and_method(cfg: DictConfig) -> tuple[SemiSupervisedDataModule, SegmentationMethod]:
    """Data first, checked completely, so bad input fails before any model is built."""
    datamodule: SemiSupervisedDataModule = instantiate(cfg.data, views=instantiate(cfg.filter))
    datamodule.prepare_data()
    datamodule.setup("fit")
    method: SegmentationMethod = instantiate(cfg.method)
    if method.uses_unlabeled and not datamodule.use_unlabeled:
        raise SettingsError(
            f"method {type(method).__name__} trains on unlabeled data but data.use_unlabeled=false"
        )
    return datamodule, method


def train(cfg: DictConfig) -> dict[str, Any]:
    with prepare_run(cfg) as run:  # the run folder is this run's until training ends
        cfg = run.cfg  # on a resume, the run's own config
        datamodule, method = build_data_and_method(cfg)
        method.run_config = run.config

        loggers = instantiate_loggers(cfg.get("logger"), wandb_id=run.state.get("wandb_id"))
        run.remember_loggers(loggers)
        callbacks = instantiate_callbacks(
            cfg.get("callbacks"),
            with_logger=bool(loggers),
            with_progress_bar=cfg.trainer.get("enable_progress_bar", True),
        )
        trainer: pl.Trainer = instantiate(
            cfg.trainer,
            callbacks=callbacks,
            logger=loggers or False,
            plugins=[AtomicCheckpointIO()],
        )
        run.record_start(loggers)

        trainer.fit(method, datamodule=datamodule, ckpt_path=run.resume_from)
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, RunCheckpoint):
                callback.readable_best()  # a damaged best is dropped before its score is reported
        metrics = {name: metric_value(trainer, name) for name in trainer.callback_metrics}
        result: dict[str, Any] = {"metrics": metrics}
        if cfg.get("test", True):
            timing = step_timing(trainer)
            result.update(
                evaluate_best(trainer, method, datamodule, run.output_dir, run.config, timing)
            )
        for logger in loggers:
            _finish(logger)
        return result


def step_timing(trainer: pl.Trainer) -> dict[str, Any] | None:
    """Seconds per training step from the run's StepTimer, with the device it ran on."""
    for callback in trainer.callbacks:
        if isinstance(callback, StepTimer) and callback.steps:
            return {**callback.summary(), "accelerator": type(trainer.accelerator).__name__}
    return None


def metric_value(trainer: pl.Trainer, name: str) -> float:
    """A metric logged during fit; for the checkpoint monitor (``val/dice``) its best value, the
    score of the checkpoint that is tested, so that a sweep optimises what selection chose."""
    for callback in trainer.checkpoint_callbacks:
        best = getattr(callback, "best_model_score", None)
        if best is not None and getattr(callback, "monitor", None) == name:
            return float(best)
    if name not in trainer.callback_metrics:
        raise KeyError(
            f"metric {name!r} was not logged; logged: {sorted(trainer.callback_metrics)}"
        )
    return float(trainer.callback_metrics[name])


def _finish(logger: Any) -> None:
    """Close the W&B run so that the next job of a multirun starts its own. The run was started
    by ``start_loggers`` (off rank zero ``experiment`` is Lightning's no-op stand-in), and
    closing it never fails a finished run: the results are already written."""
    from pytorch_lightning.loggers import WandbLogger

    logger.finalize("success")
    if isinstance(logger, WandbLogger):
        try:
            logger.experiment.finish()
        except Exception as err:  # noqa: BLE001 - W&B trouble must not fail a finished run
            log.warning("W&B run could not be closed cleanly (%s); its local files are kept.", err)
