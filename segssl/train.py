"""The ``train`` command: fit a method, then evaluate its best checkpoint and write results."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from segssl.data.datamodule import SemiSupervisedDataModule
from segssl.methods.base import SegmentationMethod
from segssl.utils.instantiate import instantiate_callbacks, instantiate_loggers
from segssl.utils.run import resolved_config, save_evaluation

log = logging.getLogger(__name__)


def build_data_and_method(cfg: DictConfig) -> tuple[SemiSupervisedDataModule, SegmentationMethod]:
    """Data first, checked completely, so bad input fails before any model is built."""
    datamodule: SemiSupervisedDataModule = instantiate(cfg.data, views=instantiate(cfg.filter))
    datamodule.prepare_data()
    datamodule.setup("fit")
    method: SegmentationMethod = instantiate(cfg.method)
    if method.uses_unlabeled and not datamodule.use_unlabeled:
        raise ValueError(
            f"method {type(method).__name__} trains on unlabeled data but data.use_unlabeled=false"
        )
    return datamodule, method


def train(cfg: DictConfig) -> dict[str, Any]:
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    pl.seed_everything(cfg.seed, workers=True)
    config = resolved_config(cfg)
    datamodule, method = build_data_and_method(cfg)
    method.run_config = config

    loggers = instantiate_loggers(cfg.get("logger"))
    callbacks = instantiate_callbacks(cfg.get("callbacks"), with_logger=bool(loggers))
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in loggers:
        logger.log_hyperparams(config)

    trainer.fit(method, datamodule=datamodule)
    if not cfg.get("test", True):
        return {}
    checkpoint = best_checkpoint(trainer)
    split = datamodule.resolve_test_split()
    method.evaluation_stage = "test" if split == datamodule.test_split else "test_on_val"
    trainer.test(method, datamodule=datamodule, ckpt_path=checkpoint, verbose=False)
    summary = method.evaluation_results[method.evaluation_stage]
    save_evaluation(output_dir, summary, split=split, checkpoint=checkpoint, config=config)
    for logger in loggers:
        _finish(logger)
    return summary


def best_checkpoint(trainer: pl.Trainer) -> str:
    """The checkpoint chosen on validation; the last one if validation never ran."""
    callback = trainer.checkpoint_callback
    best = getattr(callback, "best_model_path", "") if callback else ""
    if best:
        return best
    last = getattr(callback, "last_model_path", "") if callback else ""
    if last:
        log.warning("No validation ran before the end of training: testing the last checkpoint.")
        return last
    raise RuntimeError("no checkpoint was saved; is callbacks.model_checkpoint disabled?")


def _finish(logger: Any) -> None:
    """Close the W&B run so that the next job of a multirun starts its own."""
    from pytorch_lightning.loggers import WandbLogger

    logger.finalize("success")
    if isinstance(logger, WandbLogger) and logger._experiment is not None:
        logger.experiment.finish()
