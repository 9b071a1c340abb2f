"""The ``train`` command: fit a method, then evaluate its best checkpoint and write results.

Resuming a run is part of this command (``train resume=RUN_DIR``, ``runs/resume.py``); which
checkpoints are tested is ``runs/checkpoints.py``."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.utilities import rank_zero_only

from segssl.data.datamodule import SemiSupervisedDataModule
from segssl.methods.base import SegmentationMethod
from segssl.runs.checkpoints import evaluate_best
from segssl.runs.hydra_app import accept_run_folder
from segssl.runs.lock import RunFolderError, RunLock, explicit_run_dir, refuse_reuse
from segssl.runs.results import resolved_config
from segssl.runs.resume import (
    ResumeError,
    checkpoint_to_resume,
    plan_resume,
    read_run_state,
    record_resume,
    resume_overrides,
    resumed_seed,
    write_run_state,
)
from segssl.utils.callbacks import StepTimer
from segssl.utils.checkpoint_io import AtomicCheckpointIO, RunCheckpoint
from segssl.utils.instantiate import instantiate_callbacks, instantiate_loggers
from segssl.utils.loggers import run_hyperparameters
from segssl.utils.settings_check import SettingsError, check_training_settings
from segssl.utils.signals import install_stop_handlers
from segssl.utils.trust import UntrustedInputError

log = logging.getLogger(__name__)


def check_before_hydra(argv: list[str]) -> list[str]:
    """Run by ``cli.main`` before Hydra starts: a refused resume or a folder owned by another run
    is refused with the clearest message (the task checks again under the lock). Returns the
    overrides with those a resume adds (its own run folder); exits with the reason otherwise.
    DDP children skip this: their parent checked and owns the folder."""
    if os.environ.get("LOCAL_RANK", "0") != "0":
        return argv
    try:
        extra = resume_overrides(argv)
        run_dir = None if extra else explicit_run_dir(argv)
        if run_dir is not None:
            refuse_reuse(run_dir)
    except (ResumeError, RunFolderError, UntrustedInputError) as err:
        print(f"segssl train: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    return [*argv, *extra]


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
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    if not cfg.get("resume") and rank_zero_only.rank == 0:
        refuse_existing_run(output_dir)  # before the lock: a run's stale lock stays as it is
    # one owner per run folder (rank 0 holds it for all ranks of a DDP run)
    lock = RunLock(output_dir) if rank_zero_only.rank == 0 else nullcontext()
    with lock:
        return _train(cfg, output_dir)


def _train(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    resume_from = plan = None
    seed = cfg.seed
    if cfg.get("resume"):
        plan = plan_resume(cfg, output_dir, list(HydraConfig.get().overrides.task))
        cfg = plan.config
        resume_from, step = checkpoint_to_resume(plan)
        seed = resumed_seed(cfg.seed, step)
        log.info(
            "Resuming %s from %s (step %d), seeded with %d (of seed %d and step %d)",
            output_dir, resume_from, step, seed, cfg.seed, step,
        )  # fmt: skip
        # Lightning warns that the loaders restart mid-epoch; the fresh seed is the answer
        warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended")
    elif rank_zero_only.rank == 0:  # a DDP child writes into the folder its parent accepted
        refuse_existing_run(output_dir)
    check_training_settings(cfg)  # before anything is built
    # this run owns the folder: only now are .hydra/ (not on a resume: record_resume writes
    # its own record) and the job log written into it
    accept_run_folder(bookkeeping=plan is None)
    install_stop_handlers()  # SIGTERM / Ctrl-C stop within seconds (segssl/utils/signals.py)
    pl.seed_everything(seed, workers=True)
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
    if plan is None:
        for logger in loggers:
            logger.log_hyperparams(run_hyperparameters(config))
    elif rank_zero_only.rank == 0:
        # once everything is built: nothing left to refuse
        record_resume(plan, resume_from, step, seed)

    trainer.fit(method, datamodule=datamodule, ckpt_path=resume_from)
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, RunCheckpoint):
            callback.readable_best()  # a damaged best is dropped before its score is reported
    metrics = {name: metric_value(trainer, name) for name in trainer.callback_metrics}
    result: dict[str, Any] = {"metrics": metrics}
    if cfg.get("test", True):
        result.update(
            evaluate_best(trainer, method, datamodule, output_dir, config, step_timing(trainer))
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


def refuse_existing_run(output_dir: Path) -> None:
    """A new run never writes into a folder that holds another run's results, checkpoints or
    config (they would mix). Checked under the run lock, before ``accept_run_folder`` writes
    anything: two runs started into one folder at once find the first one's lock or config
    here (``check_before_hydra`` refuses earlier only what it can see before Hydra starts)."""
    checkpoints = output_dir / "checkpoints"
    config = output_dir / ".hydra" / "config.yaml"
    if (
        (output_dir / "results.json").is_file()
        or config.is_file()
        or any(checkpoints.glob("*.ckpt"))
    ):
        raise RunFolderError(
            f"{output_dir} already holds a run (results.json, checkpoints or "
            f".hydra/config.yaml); omit hydra.run.dir to start a new run folder, or continue "
            f"that run with `train resume={output_dir}`"
        )


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
