"""The ``train`` command: fit a method, then evaluate its best checkpoint and write results."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.utilities import rank_zero_only

from segssl.data.datamodule import SemiSupervisedDataModule
from segssl.methods.base import SegmentationMethod
from segssl.resume import latest_checkpoint, read_run_state, resumed_config, write_run_state
from segssl.utils.checkpoint_io import AtomicCheckpointIO
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
    checkpoint_to_resume = None
    if cfg.get("resume"):
        cfg = resumed_config(cfg)
        checkpoint_to_resume = str(latest_checkpoint(output_dir))
        log.info("Resuming %s from %s", output_dir, checkpoint_to_resume)
    pl.seed_everything(cfg.seed, workers=True)
    config = resolved_config(cfg)
    datamodule, method = build_data_and_method(cfg)
    method.run_config = config

    state = read_run_state(output_dir)
    loggers = instantiate_loggers(cfg.get("logger"), wandb_id=state.get("wandb_id"))
    remember_wandb_run(output_dir, loggers)
    callbacks = instantiate_callbacks(
        cfg.get("callbacks"),
        with_logger=bool(loggers),
        with_progress_bar=cfg.trainer.get("enable_progress_bar", True),
    )
    trainer: pl.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
    )
    if checkpoint_to_resume is None:
        for logger in loggers:
            logger.log_hyperparams(config)

    trainer.fit(method, datamodule=datamodule, ckpt_path=checkpoint_to_resume)
    metrics = {name: metric_value(trainer, name) for name in trainer.callback_metrics}
    result: dict[str, Any] = {"metrics": metrics}
    if cfg.get("test", True):
        result.update(evaluate_best(trainer, method, datamodule, output_dir, config))
    for logger in loggers:
        _finish(logger)
    return result


def evaluate_best(
    trainer: pl.Trainer,
    method: SegmentationMethod,
    datamodule: SemiSupervisedDataModule,
    output_dir: Path,
    config: dict[str, Any],
) -> dict[str, Any]:
    """Test the checkpoint selected on validation; write results.json and per_case.csv."""
    checkpoint = best_checkpoint(trainer)
    split = datamodule.resolve_test_split()
    method.evaluation_stage = "test" if split == datamodule.test_split else "test_on_val"
    trainer.test(method, datamodule=datamodule, ckpt_path=checkpoint, verbose=False)
    summary = method.evaluation_results[method.evaluation_stage]
    save_evaluation(output_dir, summary, split=split, checkpoint=checkpoint, config=config)
    return summary


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


@rank_zero_only
def remember_wandb_run(output_dir: Path, loggers: list) -> None:
    """Store the W&B run id in the run folder, so a resumed run continues the same W&B run."""
    from pytorch_lightning.loggers import WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger):
            write_run_state(output_dir, wandb_id=logger.experiment.id)


def best_checkpoint(trainer: pl.Trainer) -> str:
    """The checkpoint chosen on validation; the last one if validation never ran."""
    monitored = [c for c in trainer.checkpoint_callbacks if getattr(c, "monitor", None)]
    callback = monitored[0] if monitored else trainer.checkpoint_callback
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
