"""``python -m segssl COMMAND [args ...]``: the table of commands and the dispatch, nothing else.

Each command is a module under ``segssl/commands/``. A Hydra command (a config name in the
table) exposes a task ``task(cfg)``; an argparse command (no config) exposes ``main(argv)``.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple


class Command(NamedTuple):
    """One row of the command table."""

    entry: str  # "module:function", imported only when the command runs
    config: str | None  # Hydra config name; None: ``entry(argv)`` parses its own arguments
    help: str  # one line for ``python -m segssl --help``
    # "module:function" run on the arguments before Hydra starts; returns the arguments to
    # use, or exits with a message (the task itself accepts or refuses its run folder before
    # anything is written into it: segssl/runs/hydra_app.py)
    before_hydra: str | None = None


COMMANDS: dict[str, Command] = {
    "train": Command(
        "segssl.commands.train:train",
        "train",
        "train a method, then test its best checkpoint (results.json)",
        before_hydra="segssl.runs.run:check_before_hydra",
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
    from segssl.runs.hydra_app import check_hydra_overrides, hydra_command, search_path_override
    from segssl.utils.quiet import silence_known_noise

    silence_known_noise()  # harmless library warnings and tips, each listed with its reason
    verbose, rest = take_verbose(rest)

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
    with errors_reported(name, verbose):
        hydra_command(command.config, load(command.entry))()


# -- errors ---------------------------------------------------------------------------------------
# HYDRA_FULL_ERROR=1 (Hydra's switch) or --verbose: errors as raw tracebacks
VERBOSE_FLAG = "--verbose"
# the decision of the first process, read back by its DDP children (which inherit the
# HYDRA_FULL_ERROR=1 that errors_reported sets for Hydra and must not take it as the user's)
VERBOSE_ENV = "SEGSSL_VERBOSE"


def take_verbose(argv: list[str]) -> tuple[bool, list[str]]:
    """Whether errors should show their traceback (``--verbose``, ``HYDRA_FULL_ERROR=1``), and
    the arguments without ``--verbose`` (Hydra's parser does not know it)."""
    flag = VERBOSE_FLAG in argv
    rest = [a for a in argv if a != VERBOSE_FLAG]
    inherited = os.environ.get(VERBOSE_ENV)
    if inherited is not None:
        return flag or inherited == "1", rest
    return flag or os.environ.get("HYDRA_FULL_ERROR") == "1", rest


@contextmanager
def errors_reported(command: str, verbose: bool) -> Iterator[None]:
    """Run a Hydra command so that a user's mistake ends it with a short message and exit code 1.

    Hydra prints every exception as a traceback (or, for its own composition errors, advice
    such as "use +trainer.max_step=5" for a typo). With ``HYDRA_FULL_ERROR=1`` it raises
    instead, so the exception reaches here: a known user error (``known_error``) is printed as
    ``segssl COMMAND: message``, a config error with a "did you mean" from the config's own
    keys (``config_error_message``), anything else with its traceback. The task has already
    run its clean-up (``hydra_app``: a failed start removes only what it wrote) by then.
    ``verbose`` re-raises every exception as it is."""
    saved = {key: os.environ.get(key) for key in ("HYDRA_FULL_ERROR", VERBOSE_ENV)}
    os.environ["HYDRA_FULL_ERROR"] = "1"
    os.environ[VERBOSE_ENV] = "1" if verbose else "0"
    try:
        yield
    except Exception as err:
        if verbose:
            raise
        try:
            message = known_error(err) or config_error_message(err)
        except Exception:  # noqa: BLE001 - describing the error must not hide it
            message = None
        if message is None:
            traceback.print_exc()  # not a known mistake (a bug?): the whole story
        else:
            print(f"segssl {command}: {message}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def known_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean a mistake in the user's input (data, settings, run folder,
    checkpoint trust, resume, a file named on the command line), not a bug: their messages
    name the file or key and what to do. Imported here, once something failed."""
    from omegaconf.errors import MissingMandatoryValue

    from segssl.commands.predict import PartialPredictionError
    from segssl.data.readers import DataError
    from segssl.planning.planner import PlanError
    from segssl.runs.lock import RunFolderError
    from segssl.runs.resume import ResumeError
    from segssl.runs.settings_check import SettingsError
    from segssl.utils.atomic import WriteError
    from segssl.utils.checkpoint_io import DamagedCheckpointError
    from segssl.utils.trust import UntrustedInputError

    return (
        DataError,
        SettingsError,
        RunFolderError,
        UntrustedInputError,
        ResumeError,
        DamagedCheckpointError,
        PlanError,
        PartialPredictionError,
        WriteError,
        MissingMandatoryValue,
        FileNotFoundError,  # a checkpoint or input named on the command line
        FileExistsError,  # an output that would be overwritten
    )


def known_error(err: BaseException) -> str | None:
    """The message of a known user error, also when Hydra's ``instantiate`` wrapped it (an
    error raised while building ``data``, a method...); None for anything else."""
    from hydra.errors import InstantiationException
    from omegaconf.errors import MissingMandatoryValue

    known = known_errors()
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, MissingMandatoryValue):
            key = seen.full_key or seen.key
            return f"{key} is not set: give {key}=VALUE on the command line"
        if isinstance(seen, known):
            return str(seen)
        if not isinstance(seen, InstantiationException):
            return None
        seen = seen.__cause__
    return None


def config_error_message(err: BaseException) -> str | None:
    """Hydra's composition errors in words, with a "did you mean" from the config's own keys
    or a group's own options; None when ``err`` is not one."""
    from hydra.errors import CompactHydraException, MissingConfigException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    from segssl.runs.hydra_app import CONFIG_PATH_ENV, LOCAL_CONFIG_DIR

    if isinstance(err, MissingConfigException) and err.missing_cfg_file:
        group, _, choice = err.missing_cfg_file.rpartition("/")
        options = [o for o in (err.options or []) if not o.startswith("_")]
        if group and options:
            prefix = override_prefix(f"{group}={choice}")
            guess = difflib.get_close_matches(choice, options, n=1)
            hint = f"did you mean {prefix}{group}={guess[0]}? " if guess else ""
            where = ""
            if group == "experiment":  # where `segssl plan` writes its experiments
                where = (
                    f" (and those in ./{LOCAL_CONFIG_DIR}/experiment or ${CONFIG_PATH_ENV}, "
                    "where `segssl plan` writes them)"
                )
            return (
                f"{prefix}{group}={choice}: no config '{err.missing_cfg_file}'; {hint}"
                f"the {group} configs are: {', '.join(options)}{where}"
            )
    cause = err.__cause__
    if isinstance(err, CompactHydraException) and isinstance(
        cause, ConfigKeyError | ConfigAttributeError
    ):
        return unknown_key_message(err, cause)
    if isinstance(err, CompactHydraException):
        extra = f"\n{cause}" if isinstance(cause, OmegaConfBaseException) else ""
        return f"{err}{extra}"  # as Hydra prints it (an override it cannot parse, ...)
    return None


def override_prefix(override: str) -> str:
    """The ``+`` or ``++`` the user wrote before ``override`` (read from the command line Hydra
    parsed), so a suggestion keeps it."""
    for arg in sys.argv[1:]:
        if arg.lstrip("+") == override:
            return arg[: len(arg) - len(override)]
    return ""


def unknown_key_message(err: BaseException, cause: Any) -> str:
    """``trainer.max_step=5``: the key is not in the config. Hydra suggests adding it
    (``+trainer.max_step=5``), which nothing would read; the config's own keys next to it
    are the likely meant ones."""
    full_key = str(cause.full_key or cause.key)
    parent_key, _, key = full_key.rpartition(".")
    override = str(err).split("use +", 1)[1].strip() if "use +" in str(err) else full_key
    parent = getattr(cause, "parent_node", None)
    siblings: list[str] = []
    if parent is not None and hasattr(parent, "keys"):
        siblings = [str(k) for k in parent.keys() if str(k) not in ("hydra", "_target_")]
    where = f"{parent_key} has" if parent_key else "the config has"
    message = f"{override}: {where} no setting '{key}'"
    guesses = difflib.get_close_matches(key, siblings, n=1, cutoff=0.6)
    if guesses:
        meant = f"{parent_key}.{guesses[0]}" if parent_key else guesses[0]
        return f"{message}; did you mean {meant}={override.partition('=')[2]}?"
    shown = ", ".join(sorted(siblings)[:20]) + (", ..." if len(siblings) > 20 else "")
    known = f" (its settings: {shown})" if siblings else ""
    return f"{message}{known}; to add a new key on purpose, write +{override}"
