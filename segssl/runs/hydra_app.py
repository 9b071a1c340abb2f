"""What every Hydra command shares: where the configs live, and the wrapper that turns a task
``task(cfg)`` into a Hydra app (stop handlers, a sweeper's metric, and the run folder: nothing is
written into it before the task has accepted it, and a failure removes only what was written).

Hydra would write ``.hydra/`` and the job log into the run folder before the task runs, so a
command refused there (a folder that holds another run, a bad setting) would still overwrite
them. ``conf/hydra/default.yaml`` therefore turns Hydra's own writing off
(``output_subdir: null``, the job log held back by ``PendingFileHandler``), and the task calls
``accept_run_folder`` once it owns the folder: only then are the three ``.hydra/`` files (the
same text Hydra writes) and the log written.
"""

from __future__ import annotations

import logging
import os
import sys
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from hydra.experimental.callback import Callback

# where a run keeps its composed config (resume= and report read it there)
RUN_FILES = ".hydra"
# what Hydra used to write into every run folder before the task started, and segssl now
# writes once the command is accepted
HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")


def config_dir() -> Path:
    """The configs shipped inside the package (``segssl/conf``, a wheel install), else the
    repository's top-level ``conf/`` (a checkout or an editable install).

    The packaged copy is tried first: in a wheel install the folder beside the package is
    site-packages, where a ``conf/`` may belong to someone else. The checkout's ``conf/`` counts
    only beside the project's ``pyproject.toml``.
    """
    package = Path(__file__).resolve().parent.parent  # segssl/, this file is segssl/runs/
    packaged, checkout = package / "conf", package.parent / "conf"
    if (packaged / "train.yaml").is_file():
        return packaged
    if (checkout / "train.yaml").is_file() and (package.parent / "pyproject.toml").is_file():
        return checkout
    raise FileNotFoundError(
        f"segssl configs not found: expected train.yaml in {packaged} (installed wheel) or in "
        f"{checkout} (checkout); reinstall segssl, or run from a complete checkout"
    )


# where `segssl plan` writes experiments and `+experiment=NAME` finds them: folders named by
# SEGSSL_CONFIG_PATH (separated like PATH), then ./segssl_configs of the working directory
CONFIG_PATH_ENV = "SEGSSL_CONFIG_PATH"
LOCAL_CONFIG_DIR = "segssl_configs"


def user_config_dirs() -> list[Path]:
    """The users' config folders that exist, in search order (after the packaged configs, so a
    user file cannot silently replace a packaged one of the same name)."""
    folders = [Path(p).expanduser() for p in os.environ.get(CONFIG_PATH_ENV, "").split(os.pathsep)]
    folders.append(Path.cwd() / LOCAL_CONFIG_DIR)
    found: list[Path] = []
    for folder in folders:
        if str(folder) not in ("", ".") and folder.is_dir() and folder.resolve() not in found:
            found.append(folder.resolve())
    return found


def search_path_override(argv: list[str]) -> list[str]:
    """A ``hydra.searchpath=[...]`` override adding the users' config folders, unless the
    command line sets the search path itself."""
    folders = user_config_dirs()
    if not folders or any(a.lstrip("+~").startswith("hydra.searchpath") for a in argv):
        return []
    escaped = (f"file://{f}".replace("\\", "\\\\").replace("'", "\\'") for f in folders)
    quoted = (f"'{path}'" for path in escaped)
    return ["hydra.searchpath=[" + ",".join(quoted) + "]"]


def hydra_command(config_name: str, task: Callable) -> Callable[[], Any]:
    """Wrap a task function ``task(cfg)`` as a Hydra app reading the packaged configs."""
    import hydra

    @hydra.main(config_path=str(config_dir()), config_name=config_name, version_base="1.3")
    def app(cfg) -> Any:
        from segssl.utils.signals import install_stop_handlers

        global _JOB
        install_stop_handlers()  # SIGTERM / Ctrl-C stop test and predict within seconds too
        _JOB = _Job.of_hydra(cfg)
        try:
            result = task(cfg)
            accept_run_folder()  # a task that never said so: accepted by succeeding
        except BaseException:
            _JOB.clean_up()  # only what this process wrote; never a folder it did not make
            raise
        finally:
            _JOB = None
        metric = cfg.get("optimized_metric")
        if not metric:
            return result
        # a sweeper (e.g. Optuna) optimises this number
        logged = (result or {}).get("metrics", {})
        if metric not in logged:
            raise ValueError(
                f"optimized_metric={metric!r} was not logged; logged: {sorted(logged)}"
            )
        return float(logged[metric])

    return app


def check_hydra_overrides(argv: list[str]) -> None:
    """Refuse ``hydra.output_subdir``: segssl writes a run's ``.hydra/`` itself, once the command
    is accepted (a Hydra setting would make Hydra write it before that, or nowhere)."""
    for arg in argv:
        if arg.lstrip("+~").split("=", 1)[0] == "hydra.output_subdir":
            raise ValueError(
                f"{arg}: segssl writes a run's composed config to RUN/{RUN_FILES}/ itself, once "
                f"the command has accepted the run folder (resume= and report read it there); "
                f"hydra.output_subdir cannot be set, remove this override"
            )


def _rank_zero() -> bool:
    """Whether this process is the one that owns the run folder: not a DDP child (Lightning's
    ``LOCAL_RANK``/``RANK``) nor a further task of a multi-task SLURM job."""
    return all(os.environ.get(k, "0") in ("", "0") for k in ("RANK", "LOCAL_RANK", "SLURM_PROCID"))


def _resolved_dir(config: Any, key: str) -> Path | None:
    """``key`` of a Hydra config as the absolute path Hydra makes of it, or None when it cannot
    be resolved here."""
    from omegaconf import OmegaConf

    try:
        value = OmegaConf.select(config, key)
    except Exception:  # noqa: BLE001 - an interpolation only the job can resolve
        return None
    return None if value is None else Path(os.path.abspath(str(value)))


# the single-run folders that did not exist when Hydra started (Hydra makes them before the task)
_MADE_BY_HYDRA: set[Path] = set()


class RunFolderCallback(Callback):
    """Hydra callback (``conf/hydra/default.yaml``): remembers whether a single run's folder
    existed before Hydra made it (only a folder this process made may be removed), and refuses
    a sweep into a folder whose numbered job folders already hold a run before Hydra writes
    anything (its ``multirun.yaml`` included)."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        folder = _resolved_dir(config, "hydra.run.dir")
        if folder is not None and not folder.exists():
            _MADE_BY_HYDRA.add(folder)

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        from segssl.runs.lock import RunFolderError, refuse_sweep_reuse

        sweep = _resolved_dir(config, "hydra.sweep.dir")
        if sweep is None:
            return  # each job still refuses its own folder
        try:
            refuse_sweep_reuse(sweep, str(config.get("task_name") or "train"))
        except RunFolderError as err:
            # SystemExit: Hydra turns a callback's exception into a warning and goes on
            command = f"segssl {config.get('task_name') or ''}".rstrip()
            print(f"{command}: {err}", file=sys.stderr)
            raise SystemExit(1) from None


class PendingFileHandler(logging.Handler):
    """The job log file (``hydra.job_logging.handlers.file``), opened only when the run folder
    is accepted: records before that are held in memory and written first, so a refused
    command neither creates nor appends to a log file in a folder it does not own."""

    MAX_HELD = 10_000
    _instances: ClassVar[weakref.WeakSet] = weakref.WeakSet()

    def __init__(
        self,
        filename: str | os.PathLike | None = None,
        mode: str = "a",
        encoding: str | None = None,
        delay: bool = False,  # noqa: ARG002 - FileHandler's argument: this one is always delayed
        errors: str | None = None,
    ) -> None:
        super().__init__()
        self.path = Path(os.path.abspath(filename)) if filename else None
        self.mode, self.encoding, self.errors = mode, encoding, errors
        self.held: list[logging.LogRecord] = []
        self.file: logging.FileHandler | None = None
        self.state = "pending"  # pending -> open | discarded | closed
        self.created = False  # whether opening made the file (else it appends to one)
        PendingFileHandler._instances.add(self)

    def emit(self, record: logging.LogRecord) -> None:
        if self.file is not None:
            self.file.emit(record)
        elif self.state == "pending" and len(self.held) < self.MAX_HELD:
            self.held.append(record)

    def open(self) -> None:
        """Create or append to the log file, with the records held so far."""
        with self.lock:  # emit() runs under this lock too
            if self.state != "pending" or self.path is None:
                return
            self.created = not self.path.exists()
            self.file = logging.FileHandler(
                self.path, self.mode, encoding=self.encoding, errors=self.errors
            )
            self.file.setFormatter(self.formatter)
            self.state = "open"
            held, self.held = self.held, []
            for record in held:
                self.file.emit(record)

    def discard(self) -> None:
        """Write nothing more (the file, if any, is about to be removed)."""
        self.state = "discarded"
        self.held = []
        if self.file is not None:
            self.file.close()
            self.file = None

    def setFormatter(self, fmt: logging.Formatter | None) -> None:  # noqa: N802 - logging's name
        super().setFormatter(fmt)
        if self.file is not None:
            self.file.setFormatter(fmt)

    def flush(self) -> None:
        if self.file is not None:
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        self.held = []
        self.state = "closed"  # logging reconfigured (the next job of a sweep): never opened
        super().close()

    @classmethod
    def in_folder(cls, folder: Path) -> list[PendingFileHandler]:
        """The live handlers writing into ``folder`` (this job's log)."""
        return [h for h in list(cls._instances) if h.path is not None and h.path.parent == folder]


@dataclass
class _Job:
    """The run folder of the Hydra job in progress: what segssl writes into it once the task
    accepts it, and what it created there (all a failure may remove)."""

    folder: Path
    single: bool  # a single run (a sweep's job folders stay: report lists a failed job)
    owner: bool  # rank zero (a DDP child only opens its own log)
    made: bool  # Hydra made the folder for this run (it did not exist before)
    files: dict[str, str]  # .hydra/ file name -> text
    accepted: bool = False
    before: set[str] = field(default_factory=set)  # the folder's entries when accepted
    before_run_files: set[str] = field(default_factory=set)  # and those of its .hydra/
    created: list[Path] = field(default_factory=list)  # files and folders this run made

    @classmethod
    def of_hydra(cls, cfg: Any) -> _Job:
        """The job Hydra is running: its folder, and the ``.hydra/`` files Hydra would have
        written before the task (the composed config unresolved, the Hydra config, the task
        overrides), as their text now."""
        import copy

        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
        from omegaconf import OmegaConf, open_dict, read_write

        hydra_cfg = HydraConfig.get()
        folder = Path(hydra_cfg.runtime.output_dir)
        whole = copy.deepcopy(HydraConfig.instance().cfg)
        with read_write(whole.hydra), open_dict(whole.hydra):
            whole.hydra.output_subdir = RUN_FILES  # where the files are
        files = {
            "config.yaml": OmegaConf.to_yaml(cfg),
            "hydra.yaml": OmegaConf.to_yaml(whole),
            "overrides.yaml": OmegaConf.to_yaml(hydra_cfg.overrides.task),
        }
        made = folder in _MADE_BY_HYDRA
        _MADE_BY_HYDRA.discard(folder)
        return cls(folder, hydra_cfg.mode == RunMode.RUN, _rank_zero(), made, files)

    def accept(self, bookkeeping: bool) -> None:
        from segssl.utils.atomic import write_text

        if self.accepted:
            return
        self.accepted = True
        if self.owner and self.folder.is_dir():
            self.before = set(os.listdir(self.folder))
            run_files = self.folder / RUN_FILES
            if run_files.is_dir():
                self.before_run_files = set(os.listdir(run_files))
        if self.owner and bookkeeping:
            run_files = self.folder / RUN_FILES
            if not run_files.exists():
                run_files.mkdir(parents=True)
                self.created.append(run_files)
            for name, text in self.files.items():
                if not (run_files / name).exists():
                    self.created.append(run_files / name)
                write_text(run_files / name, text)
        for handler in PendingFileHandler.in_folder(self.folder):
            handler.open()
            if handler.created and handler.path is not None:
                self.created.append(handler.path)

    def clean_up(self) -> None:
        """After a failure of a single run: remove the files this process wrote if the run left
        nothing else (a run that wrote checkpoints or results keeps its ``.hydra/`` for a
        resume), then the folder if this process made it and it is empty. Nothing in a sweep's
        job folder (it tells ``report`` that the job failed), nothing from a DDP child."""
        handlers = PendingFileHandler.in_folder(self.folder)
        if not (self.single and self.owner):
            return
        for handler in handlers:
            if handler.state == "pending":
                handler.discard()  # never opened: nothing was written
        if self.accepted and self.folder.is_dir():
            if self._left_more():
                return
            for handler in handlers:
                handler.discard()
            for path in reversed(self.created):  # files before the folder that holds them
                try:
                    path.rmdir() if path.is_dir() else path.unlink()
                except OSError:
                    pass  # not empty or already gone: keep it
        if self.made:
            try:
                self.folder.rmdir()  # only when empty
            except OSError:
                pass

    def _left_more(self) -> bool:
        """Whether the folder holds entries that were neither there when the run was accepted
        nor written by the acceptance (checkpoints, logs, results of the failed run)."""
        from segssl.runs.lock import LOCK_NAME

        ours = {p.name for p in self.created if p.parent == self.folder}
        if set(os.listdir(self.folder)) - self.before - ours - {LOCK_NAME}:
            return True
        run_files = self.folder / RUN_FILES
        ours = {p.name for p in self.created if p.parent == run_files}
        return run_files.is_dir() and bool(
            set(os.listdir(run_files)) - self.before_run_files - ours
        )


# the job the Hydra app is running (None outside one: a task called directly, as in tests)
_JOB: _Job | None = None


def accept_run_folder(bookkeeping: bool = True) -> None:
    """Called by a task once it owns its run folder (lock taken, the folder checked, the
    command's inputs read): writes ``.hydra/`` (unless ``bookkeeping`` is false: a resume
    records itself) and opens the job log. Before this nothing is written into the folder.
    Does nothing when the task runs outside the Hydra app."""
    if _JOB is not None:
        _JOB.accept(bookkeeping)
