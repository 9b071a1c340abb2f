"""Logger construction that never blocks a run on the network."""

from __future__ import annotations

import logging
import netrc
import os
from typing import Any

log = logging.getLogger(__name__)


def wandb_credentials_present() -> bool:
    """True if the user logged in (`wandb login`) or gave an API key."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
        return os.path.isfile(path) and netrc.netrc(path).authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_mode() -> str:
    """The user's WANDB_MODE if set, else online only with credentials, else offline."""
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode
    return "online" if wandb_credentials_present() else "offline"


def wandb_logger(**kwargs: Any):
    """A WandbLogger that is offline unless the user asked otherwise, with a short timeout.

    Starting the W&B run is checked later by ``ensure_logger_started``: if an online start fails
    (no network, bad key), the run carries on offline instead of crashing.
    """
    import wandb
    from pytorch_lightning.loggers import WandbLogger

    mode = wandb_mode()
    os.environ.setdefault("WANDB_SILENT", "true")
    os.makedirs(kwargs.get("save_dir", "."), exist_ok=True)
    settings = wandb.Settings(init_timeout=30, silent=True, console="off")
    return WandbLogger(offline=mode != "online", settings=settings, **kwargs)


def start_loggers(loggers: list, attempts: int = 10, wait_s: float = 3.0) -> list:
    """Start each logger now, so that W&B trouble is dealt with before training, never by a
    crash later: a W&B server that cannot be reached makes the run log offline; a run id still
    held by a killed process (its W&B service outlives it for a few seconds) is retried, then
    given up for a new id."""
    from pytorch_lightning.loggers import WandbLogger

    started = []
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger = _start_wandb(logger, attempts, wait_s)
        if logger is not None:
            started.append(logger)
    return started


def _start_wandb(logger: Any, attempts: int, wait_s: float) -> Any | None:
    import time

    kwargs = _rebuild_kwargs(logger)
    if kwargs.get("id"):
        stop_orphaned_wandb_services()
    for attempt in range(attempts):
        try:
            _ = logger.experiment
            return logger
        except Exception as err:  # noqa: BLE001 - any failure to start W&B must not kill a run
            if "in use" in str(err) and attempt < attempts - 1:
                log.warning("W&B run %s is still held (%s); retrying", kwargs.get("id"), err)
                time.sleep(wait_s)
            elif os.environ.get("WANDB_MODE") != "offline":
                log.warning("W&B could not start online (%s); logging offline instead.", err)
                os.environ["WANDB_MODE"] = "offline"
            elif kwargs.pop("id", None):
                log.warning("W&B run cannot be continued (%s); starting a new one.", err)
                kwargs.pop("resume", None)
            else:
                log.warning("W&B cannot start (%s); this run is not logged to W&B.", err)
                return None
            logger = wandb_logger(**kwargs)
    return None


def stop_orphaned_wandb_services() -> None:
    """Stop W&B services whose run process is gone (a killed run's service keeps its run id
    for a while, which would block resuming that run). Linux only; best effort."""
    import signal

    proc = "/proc"
    if not os.path.isdir(proc):
        return
    for pid in filter(str.isdigit, os.listdir(proc)):
        try:
            with open(f"{proc}/{pid}/cmdline", "rb") as f:
                args = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if not args or not args[0].endswith("wandb-core") or "--pid" not in args:
            continue
        owner = args[args.index("--pid") + 1] if args.index("--pid") + 1 < len(args) else ""
        if owner.isdigit() and not os.path.exists(f"{proc}/{owner}"):
            try:
                os.kill(int(pid), signal.SIGTERM)
                log.info("Stopped the W&B service %s of the ended process %s", pid, owner)
            except OSError:
                pass


def _rebuild_kwargs(logger: Any) -> dict:
    kwargs = dict(logger._wandb_init)
    kwargs.pop("mode", None)
    kwargs.pop("settings", None)
    kwargs.pop("dir", None)
    kwargs["save_dir"] = logger.save_dir
    return {
        k: v
        for k, v in kwargs.items()
        if k in ("project", "group", "tags", "job_type", "save_dir", "name", "id", "resume")
    }


class _AppendingWriter:
    """Mixin for Lightning's CSV writer: keep an existing metrics file and append to it (a
    resumed run continues its log instead of deleting it)."""

    def _check_log_dir_exists(self) -> None:
        return None


def appending_csv_logger(save_dir: str, name: str = "csv", version: int = 0):
    """A CSVLogger that appends to ``<save_dir>/<name>/version_<version>/metrics.csv``."""
    import csv

    from pytorch_lightning.loggers import CSVLogger
    from pytorch_lightning.loggers.csv_logs import ExperimentWriter

    class Writer(_AppendingWriter, ExperimentWriter):
        def __init__(self, log_dir: str) -> None:
            super().__init__(log_dir)
            if os.path.isfile(self.metrics_file_path):
                with open(self.metrics_file_path, newline="") as f:
                    self.metrics_keys = list(next(csv.reader(f), []))

    class Logger(CSVLogger):
        @property
        def experiment(self) -> ExperimentWriter:
            if self._experiment is None:
                os.makedirs(self.root_dir, exist_ok=True)
                self._experiment = Writer(log_dir=self.log_dir)
            return self._experiment

    return Logger(save_dir=save_dir, name=name, version=version)
