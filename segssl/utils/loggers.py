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


def start_loggers(loggers: list) -> list:
    """Start each logger now, so that a W&B server that cannot be reached makes the run fall back
    to offline mode before training rather than crash it later."""
    from pytorch_lightning.loggers import WandbLogger

    started = []
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            try:
                _ = logger.experiment
            except Exception as err:  # noqa: BLE001 - any failure to reach W&B must not kill a run
                log.warning("W&B could not start online (%s); logging offline instead.", err)
                os.environ["WANDB_MODE"] = "offline"
                logger = wandb_logger(**_rebuild_kwargs(logger))
                _ = logger.experiment
        started.append(logger)
    return started


def _rebuild_kwargs(logger: Any) -> dict:
    kwargs = dict(logger._wandb_init)
    kwargs.pop("mode", None)
    kwargs.pop("settings", None)
    kwargs.pop("dir", None)
    kwargs["save_dir"] = logger.save_dir
    return {
        k: v
        for k, v in kwargs.items()
        if k in ("project", "group", "tags", "job_type", "save_dir", "name", "id", "config")
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
