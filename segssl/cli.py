"""``python -m segssl COMMAND [args ...]``: the table of commands and the dispatch, nothing else.

Each command is a module under ``segssl/commands/``. A Hydra command (a config name in the
table) exposes a task ``task(cfg)``; an argparse command (no config) exposes ``main(argv)``.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any, NamedTuple


class Command(NamedTuple):
    """One row of the command table."""

    entry: str  # "module:function", imported only when the command runs
    config: str | None  # Hydra config name; None: ``entry(argv)`` parses its own arguments
    help: str  # one line for ``python -m segssl --help``
    # "module:function" run on the arguments before Hydra starts; returns the arguments to
    # use, or exits with a message (the task itself accepts or refuses its run folder before
    # anything is written into it: segssl/commands/hydra_app.py)
    before_hydra: str | None = None


COMMANDS: dict[str, Command] = {
    "train": Command(
        "segssl.commands.train:train",
        "train",
        "train a method, then test its best checkpoint (results.json)",
        before_hydra="segssl.commands.train:check_before_hydra",
    ),
    "test": Command(
        "segssl.commands.test:test",
        "test",
        "evaluate a checkpoint: ckpt_path=PATH [split=val|test] [data_root=PATH]",
    ),
    "predict": Command(
        "segssl.commands.predict:predict",
        "predict",
        "label masks: ckpt_path=PATH input=PATH output=DIR [model_name=NAME]",
    ),
    "report": Command(
        "segssl.commands.report:main",
        None,
        "mean +- std over seeds of run folders: report PATH... [--out DIR]",
    ),
    "plan": Command(
        "segssl.commands.plan:main",
        None,
        "fingerprint a NIfTI folder and write its experiment: plan data.root=PATH [name=NAME]",
    ),
    "filter": Command(
        "segssl.commands.filter:main",
        None,
        "write a DSAIF filter panel PNG: filter INPUT --out FILE.png",
    ),
}

USAGE = """usage: python -m segssl COMMAND [overrides ...]

commands:
{commands}

Hydra overrides follow the command, e.g.
  python -m segssl train method=supervised data.labeled=3 trainer.max_steps=500
  python -m segssl train +experiment=acdc data.root=/path/to/ACDC
  python -m segssl train -m seed=0,1,2 method=cps,dsaif
  python -m segssl train --help        (the full config and its groups)
  python -m segssl report --help       (an argparse command's own options)
"""


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {command.help}" for name, command in COMMANDS.items()]
    return USAGE.format(commands="\n".join(lines))


def load(entry: str) -> Callable[..., Any]:
    """The function named by ``"module:function"`` (a command's module is imported only when
    that command runs, so ``--help`` and light commands stay quick)."""
    module, _, name = entry.partition(":")
    return getattr(importlib.import_module(module), name)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return
    name, rest = argv[0], argv[1:]
    child = False
    if name not in COMMANDS and "LOCAL_RANK" in os.environ and "SEGSSL_COMMAND" in os.environ:
        # a DDP child process: Lightning re-launches this module with the overrides only
        name, rest, child = os.environ["SEGSSL_COMMAND"], argv, True
    if name not in COMMANDS:
        print(f"unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        raise SystemExit(2)
    command = COMMANDS[name]
    if command.config is None:
        load(command.entry)(rest)
        return
    from segssl.commands.hydra_app import check_hydra_overrides, hydra_command, search_path_override

    if not child:  # Lightning gives its children hydra.output_subdir=null: they write nothing
        try:
            check_hydra_overrides(rest)
        except ValueError as err:
            print(f"segssl {name}: {err}", file=sys.stderr)
            raise SystemExit(2) from None
    if command.before_hydra:
        rest = load(command.before_hydra)(rest)

    os.environ["SEGSSL_COMMAND"] = name  # read back by DDP children (above)
    # experiments of segssl_configs/ or SEGSSL_CONFIG_PATH (what `segssl plan` writes)
    # (first: after an option such as --cfg job, argparse takes no more overrides)
    sys.argv = [f"segssl {name}", *search_path_override(rest), *rest]
    hydra_command(command.config, load(command.entry))()
