"""A training run's start in one call: ``with prepare_run(cfg) as run:`` refuses a folder that is
not this run's, owns the folder for the block, plans a resume, checks the settings, accepts the
folder and seeds; ``Run`` then says what the run is.

The order is the point: every refusal comes before anything is written into the folder
(``accept_run_folder`` writes ``.hydra/`` and the job log only once the settings are checked),
and in a DDP run rank 0 alone holds the lock and writes the folder's records."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from pytorch_lightning.utilities import rank_zero_only

from segssl.runs.hydra_app import accept_run_folder
from segssl.runs.lock import RunFolderError, RunLock, explicit_run_dir, refuse_reuse
from segssl.runs.results import resolved_config
from segssl.runs.resume import (
    ResumeError,
    ResumePlan,
    checkpoint_to_resume,
    plan_resume,
    read_run_state,
    record_resume,
    resume_overrides,
    resumed_seed,
    write_run_state,
)
from segssl.runs.settings_check import check_training_settings
from segssl.utils.loggers import run_hyperparameters
from segssl.utils.signals import install_stop_handlers
from segssl.utils.trust import UntrustedInputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Run:
    """What a started training run is: its folder, the config it runs with (on a resume the
    run's own, with the allowed changes), the seed it was seeded with, and what it resumes."""

    output_dir: Path
    cfg: DictConfig
    seed: int  # the seed actually used (on a resume, ``resumed_seed`` of the run's seed)
    config: dict[str, Any]  # ``cfg`` resolved: stored with results and checkpoints
    plan: ResumePlan | None = None  # None: a fresh run
    resume_from: Path | None = None  # the checkpoint a resume continues
    step: int | None = None  # its global step

    @property
    def resumed(self) -> bool:
        return self.plan is not None

    @cached_property
    def state(self) -> dict[str, Any]:
        """The run state file (the W&B run id a resume continues), read when first asked."""
        return read_run_state(self.output_dir)

    def remember_loggers(self, loggers: list) -> None:
        """Keep the W&B run id in the folder, so a resume continues the same W&B run."""
        remember_wandb_run(self.output_dir, loggers)

    def record_start(self, loggers: list) -> None:
        """Once everything is built (nothing is left to refuse): a fresh run logs its
        hyperparameters, a resumed one records this start in its folder (rank 0 only)."""
        if self.plan is None:
            for logger in loggers:
                logger.log_hyperparams(run_hyperparameters(self.config))
        elif rank_zero_only.rank == 0:
            record_resume(self.plan, self.resume_from, self.step, self.seed)


@contextmanager
def prepare_run(cfg: DictConfig) -> Iterator[Run]:
    """Start the training run of Hydra's job folder; the folder is owned until the block ends
    (rank 0 holds the lock for all ranks of a DDP run)."""
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    if not cfg.get("resume") and rank_zero_only.rank == 0:
        refuse_existing_run(output_dir)  # before the lock: a run's stale lock stays as it is
    lock = RunLock(output_dir) if rank_zero_only.rank == 0 else nullcontext()
    with lock:
        yield _start(cfg, output_dir)


def _start(cfg: DictConfig, output_dir: Path) -> Run:
    """Under the lock: plan a resume or refuse a used folder, check the settings, and only then
    accept the folder, install the stop handlers and seed."""
    resume_from = plan = step = None
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
    return Run(output_dir, cfg, seed, resolved_config(cfg), plan, resume_from, step)


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


@rank_zero_only
def remember_wandb_run(output_dir: Path, loggers: list) -> None:
    """Store the W&B run id in the run folder, so a resumed run continues the same W&B run."""
    from pytorch_lightning.loggers import WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger):
            write_run_state(output_dir, wandb_id=logger.experiment.id)
