"""What every Hydra command shares: where the configs live, and the wrapper that turns a task
``task(cfg)`` into a Hydra app (stop handlers, no empty run folder, a sweeper's metric)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

# what Hydra writes into every run folder before the task starts
HYDRA_FILES = {"config.yaml", "hydra.yaml", "overrides.yaml"}


def config_dir() -> Path:
    """The configs shipped inside the package (``segssl/conf``, a wheel install), else the
    repository's top-level ``conf/`` (a checkout or an editable install).

    The packaged copy is tried first: in a wheel install the folder beside the package is
    site-packages, where a ``conf/`` may belong to someone else. The checkout's ``conf/`` counts
    only beside the project's ``pyproject.toml``.
    """
    package = Path(__file__).resolve().parent.parent  # segssl/, this file is segssl/commands/
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

        install_stop_handlers()  # SIGTERM / Ctrl-C stop test and predict within seconds too
        try:
            result = task(cfg)
        except BaseException:
            # a run that failed before writing anything leaves no empty folder behind
            remove_bookkeeping_only_run_folder()
            raise
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


def remove_bookkeeping_only_run_folder() -> bool:
    """Remove this single run's folder if it holds nothing but Hydra's bookkeeping (its
    ``.hydra/`` files and the job log); return whether it did. Never a folder with anything
    else in it (checkpoints, results, a resumed run's files), never a sweep's folders (a failed
    job's folder tells ``report`` the job is missing), never from a DDP child process."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if any(os.environ.get(k, "0") not in ("", "0") for k in ("RANK", "LOCAL_RANK")):
        return False
    if not HydraConfig.initialized():
        return False
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.RUN:
        return False
    folder = Path(hydra_cfg.runtime.output_dir)
    subdir = hydra_cfg.output_subdir
    if not folder.is_dir() or folder.resolve() == Path(hydra_cfg.runtime.cwd).resolve():
        return False
    for entry in folder.iterdir():
        if entry.is_file() and not entry.is_symlink() and entry.suffix == ".log":
            continue
        if entry.name == subdir and entry.is_dir() and not entry.is_symlink():
            if all(f.is_file() and f.name in HYDRA_FILES for f in entry.iterdir()):
                continue
        return False
    shutil.rmtree(folder, ignore_errors=True)
    return True
