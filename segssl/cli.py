"""``python -m segssl COMMAND [hydra overrides]``: each command a thin Hydra entry point."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
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
        result = task(cfg)
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
    if command == "train":
        from segssl.resume import resume_overrides

        rest = [*rest, *resume_overrides(rest)]
    os.environ["SEGSSL_COMMAND"] = command
    sys.argv = [f"segssl {command}", *rest]
    if command == "train":
        from segssl.train import train as task
    elif command == "predict":
        from segssl.predict import predict as task
    else:
        from segssl.evaluate import test as task
    hydra_command(COMMANDS[command][0], task)()
