"""Loggers on Lightning's public API: W&B that never blocks or crashes a run on the network, and
a CSV log that a resumed run continues."""

from __future__ import annotations

import csv
import io
import logging
import netrc
import os
import re
import time
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import Logger, WandbLogger
from pytorch_lightning.utilities import rank_zero_only

from segssl.utils.atomic import atomic_open, write_text

log = logging.getLogger(__name__)

# where our W&B factory keeps the arguments it was given, to build the logger again (offline, or
# under a new run id) when starting it fails: Lightning keeps its own copy private
WANDB_KWARGS = "segssl_wandb_kwargs"


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


# the view group's name (``filter``; ``views`` if it is renamed)
VIEW_GROUPS = ("views", "filter")
# methods whose own config selects the view filter of the same name (conf/method/dsaif.yaml):
# for them filter=none is a change worth naming; every other method's default filter is none
FILTER_METHODS = frozenset({"dsaif"})
# a run folder's name as conf/hydra/default.yaml makes it (runs/<stamp>, multirun/<stamp>/<job>)
FOLDER_STAMP = re.compile(r"(\d{4})-(\d{2})-(\d{2})_(\d{2})-(\d{2})-(\d{2})")


def method_variant(method: str | None, view_filter: str | None) -> str:
    """What was trained, as a reader names it: ``dsaif``, ``cps``, ``bcp+dsaif``,
    ``dsaif+max_only``; the filter is named only when it is not the method's own."""
    method = method or "run"
    if view_filter in (None, method) or (view_filter == "none" and method not in FILTER_METHODS):
        return method
    return f"{method}+{view_filter}"


def run_group(experiment: str | None, run_dir: str | os.PathLike | None) -> str:
    """The W&B group as a researcher sets it by hand: the experiment and the sweep. All jobs of
    one multirun share a group (``acdc/2026-12-05_11-10-44-123456``, the sweep folder's name);
    a single run is its own group (its folder's name). Methods, labeled counts and seeds are
    top-level config keys (``run_hyperparameters``), so "group by method" is one click."""
    folder = Path(run_dir) if run_dir else None
    if folder is None:
        return f"{experiment or 'segssl'}/{time.strftime('%Y-%m-%d_%H-%M-%S')}"
    in_sweep = folder.name.isdigit() and (
        (folder.parent / "multirun.yaml").is_file()
        or FOLDER_STAMP.fullmatch(folder.parent.name[:19]) is not None
    )
    return f"{experiment or 'segssl'}/{(folder.parent if in_sweep else folder).name}"


def folder_stamp(run_dir: str | os.PathLike | None) -> str:
    """A short start stamp from the run folder's name (``1205-1110``, ``1205-1110-j3`` for
    job 3 of a multirun), so the name of a resumed run stays the same; the clock otherwise."""
    if run_dir:
        folder = Path(run_dir)
        for candidate, job in ((folder.name, ""), (folder.parent.name, folder.name)):
            match = FOLDER_STAMP.fullmatch(candidate[:19]) if len(candidate) >= 19 else None
            if match:
                _, month, day, hour, minute, _ = match.groups()
                return f"{month}{day}-{hour}{minute}" + (f"-j{job}" if job.isdigit() else "")
    return time.strftime("%m%d-%H%M")


def run_name(
    method: str | None,
    view_filter: str | None,
    labeled: Any,
    seed: Any,
    run_dir: str | os.PathLike | None = None,
) -> str:
    """A readable W&B run name: ``dsaif-l7-s0-1205-1110`` (method[+filter], labeled, seed,
    start stamp)."""
    parts = [method_variant(method, view_filter)]
    if labeled is not None:
        parts.append(f"l{labeled}")
    if seed is not None:
        parts.append(f"s{seed}")
    parts.append(folder_stamp(run_dir))
    return "-".join(parts)


def run_hyperparameters(config: dict[str, Any]) -> dict[str, Any]:
    """What a logger records of a run: the keys a sweep's runs are compared by, flat at the top
    (``method``, ``filter``, ``variant``, ``network``, ``data``, ``labeled``, ``seed``,
    ``experiment``, ``group``, and ``sweep``: the multirun folder its jobs share, null for a
    single run) so the W&B dashboard groups and filters by them in one click, and the whole
    resolved config under ``config`` (nested, so its ``method`` / ``filter`` settings do not
    collide)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    choices: dict[str, Any] = {}
    sweep = run_dir = None
    if HydraConfig.initialized():
        hydra = HydraConfig.get()
        choices = dict(hydra.runtime.choices)
        run_dir = hydra.runtime.output_dir
        if hydra.mode == RunMode.MULTIRUN:
            sweep = str(hydra.sweep.dir)
    view = next((choices[g] for g in VIEW_GROUPS if choices.get(g)), None)
    method = config.get("method_name") or choices.get("method")
    labeled = (config.get("data") or {}).get("labeled")
    experiment = config.get("experiment_name")
    return {
        "method": method,
        "filter": view,
        "variant": method_variant(method, view),
        "network": choices.get("model"),
        "data": choices.get("data"),
        "data.labeled": labeled,
        "labeled": labeled,
        "seed": config.get("seed"),
        "experiment": experiment,
        "group": run_group(experiment, run_dir),
        "sweep": sweep,
        "run_dir": run_dir,
        "config": config,
    }


def _identity_names(kwargs: dict[str, Any]) -> dict[str, Any]:
    """W&B ``group`` and ``name`` from ``identity`` (conf/logger/wandb.yaml) where they are
    ``auto``; a name or group given by the user is kept."""
    identity = dict(kwargs.pop("identity", None) or {})
    if not identity:  # built by hand: W&B's own defaults for what is not given
        return {k: v for k, v in kwargs.items() if not (k in ("group", "name") and v == "auto")}
    method, view = identity.get("method"), identity.get("filter")
    labeled, seed = identity.get("labeled"), identity.get("seed")
    if kwargs.get("group", "auto") == "auto":
        kwargs["group"] = run_group(identity.get("experiment"), kwargs.get("save_dir"))
    if kwargs.get("name", "auto") == "auto":
        kwargs["name"] = run_name(method, view, labeled, seed, kwargs.get("save_dir"))
    return kwargs


def wandb_logger(**kwargs: Any):
    """A WandbLogger that is offline unless the user asked otherwise, with a short timeout.

    ``group`` / ``name`` ``auto`` (the default) are made from ``identity`` (experiment,
    method, filter, labeled, seed): see ``run_group`` and ``run_name``. Starting the W&B run
    is checked later by ``start_loggers``: if an online start fails (no network, bad key), the
    run carries on offline instead of crashing.
    """
    import wandb

    given = dict(kwargs)
    kwargs = _identity_names(dict(kwargs))
    mode = wandb_mode()
    os.environ.setdefault("WANDB_SILENT", "true")
    wandb_mode_setting = "online" if mode == "online" else "offline"
    # set W&B's terminal up silent now: Lightning passes `anonymous=None` to wandb.init, and
    # wandb 0.31 warns "The anonymous setting has no effect" before its own setup would
    # read WANDB_SILENT (harmless: we never log anonymously). The mode is given here too: this
    # setup outlives the WANDB_MODE that Lightning sets later for an offline logger.
    wandb.setup(settings=wandb.Settings(silent=True, mode=wandb_mode_setting))
    os.makedirs(kwargs.get("save_dir", "."), exist_ok=True)
    settings = wandb.Settings(init_timeout=30, silent=True, console="off", mode=wandb_mode_setting)
    logger = RunWandbLogger(offline=mode != "online", settings=settings, **kwargs)
    setattr(logger, WANDB_KWARGS, given)
    return logger


class RunWandbLogger(WandbLogger):
    """Lightning's WandbLogger, with the run's config kept readable: the keys a run is compared
    by stay at the top (``run_hyperparameters``), and the LightningModule's own
    hyper-parameters, which Lightning logs at fit start, go under ``module`` (flat they would
    replace ``model`` and crowd the top level; all of them are in ``config`` too)."""

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        params = dict(params) if params is not None else {}
        if "config" not in params:  # not ours: Lightning's module / datamodule hparams
            params = {"module": params}
        super().log_hyperparams(params, *args, **kwargs)


def define_run_metrics(experiment: Any) -> None:
    """Validation Dice keeps its best and last value in the run's summary (what selection
    chose, where training ended); every curve is drawn against ``trainer/global_step``
    (Lightning's own ``define_metric``). Best effort: a W&B stand-in may not have it."""
    try:
        experiment.define_metric("val/dice", summary="max,last")
        experiment.define_metric("train/loss", summary="min,last")
    except Exception as err:  # noqa: BLE001 - a summary setting is never worth a failed run
        log.debug("W&B define_metric failed: %s", err)


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
    if kwargs and kwargs.get("id"):
        stop_orphaned_wandb_services()
    for attempt in range(attempts):
        try:
            define_run_metrics(logger.experiment)
            return logger
        except Exception as err:  # noqa: BLE001 - any failure to start W&B must not kill a run
            if kwargs is None:
                log.warning("W&B cannot start (%s); this run is not logged to W&B.", err)
                return None
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


def _rebuild_kwargs(logger: Any) -> dict | None:
    """The arguments our factory built this W&B logger from (None for one built elsewhere)."""
    kwargs = getattr(logger, WANDB_KWARGS, None)
    return dict(kwargs) if kwargs is not None else None


def _scalar(value: Any) -> Any:
    """A logged tensor as a number (Lightning usually converts them before they get here)."""
    return value.item() if hasattr(value, "item") else value


class AppendingCSVLogger(Logger):
    """Metrics in ``<save_dir>/<name>/version_<version>/metrics.csv``, continued rather than
    replaced: a resumed run appends to the file it finds, keeping its rows and columns.

    Rows are buffered and written at each ``save()`` (Lightning calls it after every logging
    call), on rank zero only. A metric seen for the first time extends the header: the file is
    rewritten once, atomically, with the sorted union of the columns (earlier rows get blanks),
    so a crash never leaves half a log. A last line cut short by a killed writer is dropped when
    the file is first read again.
    """

    def __init__(self, save_dir: str | os.PathLike, name: str = "csv", version: int = 0) -> None:
        super().__init__()
        self._save_dir = os.fspath(save_dir)
        self._name = name
        self._version = version
        self._pending: list[dict[str, Any]] = []
        self._rows_logged = 0
        self._columns: list[str] | None = None  # the file's header once read (or written)

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> int:
        return self._version

    @property
    def save_dir(self) -> str:
        return self._save_dir

    @property
    def root_dir(self) -> str:
        return os.path.join(self._save_dir, self._name)

    @property
    def log_dir(self) -> str:
        return os.path.join(self.root_dir, f"version_{self._version}")

    @property
    def metrics_file(self) -> Path:
        return Path(self.log_dir) / "metrics.csv"

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Nothing to write: the run's config is in ``.hydra/`` and ``results.json``."""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        row = {key: _scalar(value) for key, value in metrics.items()}
        row["step"] = self._rows_logged if step is None else step
        self._rows_logged += 1
        self._pending.append(row)

    @rank_zero_only
    def save(self) -> None:
        if not self._pending:
            return
        columns = self._existing_columns()
        new = set().union(*self._pending) - set(columns)
        if new or not self.metrics_file.is_file():
            self._rewrite(sorted({*columns, *new}), self._pending)
        else:
            with open(self.metrics_file, "a", newline="", encoding="utf-8") as handle:
                csv.DictWriter(handle, fieldnames=columns).writerows(self._pending)
        self._pending = []

    def _existing_columns(self) -> list[str]:
        """The header of the file on disk, read once; a cut-short last line is dropped."""
        if self._columns is not None:
            return self._columns
        self._columns = []
        if self.metrics_file.is_file():
            text = self.metrics_file.read_text(encoding="utf-8")
            if text and not text.endswith("\n"):
                log.warning("%s ends in a partial row (killed writer): dropped", self.metrics_file)
                write_text(self.metrics_file, text[: text.rfind("\n") + 1])
            self._columns = next(csv.reader(io.StringIO(text)), [])
        return self._columns

    def _rewrite(self, columns: list[str], rows: list[dict[str, Any]]) -> None:
        old_rows: list[dict[str, Any]] = []
        if self.metrics_file.is_file():
            with open(self.metrics_file, newline="", encoding="utf-8") as handle:
                old_rows = list(csv.DictReader(handle))
        with atomic_open(self.metrics_file, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows([*old_rows, *rows])
        self._columns = columns


def appending_csv_logger(
    save_dir: str | os.PathLike, name: str = "csv", version: int = 0
) -> AppendingCSVLogger:
    """The CSV logger of ``conf/logger``: appends to ``<save_dir>/<name>/version_<version>``."""
    return AppendingCSVLogger(save_dir=save_dir, name=name, version=version)
