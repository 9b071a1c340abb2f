"""``python -m segssl COMMAND [hydra overrides]``: each command a thin Hydra entry point."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("train", "train a method, then test its best checkpoint (results.json)"),
    "test": ("test", "evaluate a checkpoint: ckpt_path=PATH [split=val|test] [data_root=PATH]"),
    "predict": ("predict", "label masks: ckpt_path=PATH input=PATH output=DIR [model_name=NAME]"),
    "report": ("", "mean +- std over seeds of run folders: report PATH... [--out DIR]"),
    "filter": ("", "write a DSAIF filter panel PNG: filter INPUT --out FILE.png"),
}

USAGE = """usage: python -m segssl COMMAND [overrides ...]

commands:
{commands}

Hydra overrides follow the command, e.g.
  python -m segssl train method=supervised data.labeled=3 trainer.max_steps=500
  python -m segssl train +experiment=acdc data.root=/path/to/ACDC
  python -m segssl train -m seed=0,1,2 method=cps,dsaif
  python -m segssl train --help        (the full config and its groups)
"""


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return USAGE.format(commands="\n".join(lines))


def hydra_command(config_name: str, task: Callable) -> Callable[[], Any]:
    """Wrap a task function ``task(cfg)`` as a Hydra app reading the packaged configs."""
    import hydra

    from segssl.config import config_dir

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


# what Hydra writes into every run folder before the task starts
HYDRA_FILES = {"config.yaml", "hydra.yaml", "overrides.yaml"}


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


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS and "LOCAL_RANK" in os.environ and "SEGSSL_COMMAND" in os.environ:
        # a DDP child process: Lightning re-launches this module with the overrides only
        command, rest = os.environ["SEGSSL_COMMAND"], argv
    if command not in COMMANDS:
        print(f"unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        raise SystemExit(2)
    if command == "filter":
        from segssl.filters.cli import main as filter_main

        filter_main(rest)
        return
    if command == "report":
        from segssl.report import main as report_main

        report_main(rest)
        return
    if command == "train" and os.environ.get("LOCAL_RANK", "0") == "0":
        # before Hydra writes .hydra/: a refused resume or a folder owned by another run
        # must lose nothing (DDP children skip this: their parent checked and owns the folder)
        from segssl.resume import ResumeError, resume_overrides
        from segssl.utils.run_lock import RunFolderError, explicit_run_dir, refuse_reuse
        from segssl.utils.trust import UntrustedInputError

        try:
            extra = resume_overrides(rest)
            run_dir = None if extra else explicit_run_dir(rest)
            if run_dir is not None:
                refuse_reuse(run_dir)
        except (ResumeError, RunFolderError, UntrustedInputError) as err:
            print(f"segssl train: {err}", file=sys.stderr)
            raise SystemExit(1) from None
        rest = [*rest, *extra]
    os.environ["SEGSSL_COMMAND"] = command
    sys.argv = [f"segssl {command}", *rest]
    if command == "train":
        from segssl.train import train as task
    elif command == "predict":
        from segssl.predict import predict as task
    else:
        from segssl.evaluate import test as task
    hydra_command(COMMANDS[command][0], task)()
