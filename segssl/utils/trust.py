"""What segssl trusts in a file from elsewhere: nothing that runs code.

A checkpoint is read with ``torch.load(weights_only=True)`` (tensors and plain data only: a
pickle that would build an arbitrary object is refused before it runs). A config stored in a
checkpoint or a run folder is instantiated only when every ``_target_`` names a callable on the
allow-list below; anything else is refused before anything is built."""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

# The callables a stored config may name: the packages segssl's own configs (conf/**.yaml)
# build from, and nothing else. A module prefix ends with a dot; other entries are exact names.
# Narrower than "segssl.*" on purpose: segssl.cli, segssl.commands.train or segssl.utils.atomic are
# callables too, and a checkpoint must not be able to start a command or write a file.
ALLOWED_TARGET_PREFIXES: tuple[str, ...] = (
    "segssl.data.datamodule.",
    "segssl.data.layouts.",
    "segssl.filters.views.",
    "segssl.methods.",
    "segssl.models.",
    "segssl.utils.callbacks.",
    "segssl.utils.checkpoint_io.",
    "segssl.utils.loggers.",
    "segssl.utils.signals.",
    "monai.networks.nets.",
    "torch.optim.",
    "torch.nn.",
    "pytorch_lightning.callbacks.",
    "pytorch_lightning.loggers.",
    "lightning.pytorch.callbacks.",
    "lightning.pytorch.loggers.",
)
ALLOWED_TARGETS: frozenset[str] = frozenset(
    {
        "pytorch_lightning.Trainer",
        "lightning.pytorch.Trainer",
        # a callback of conf/callbacks/default.yaml outside the prefixes above
        "segssl.utils.stop_on_signal.StopOnSignal",
    }
)
# Top-level keys of a stored run config that segssl never instantiates: Hydra's own settings
# (launcher, sweeper) recorded with the run. They are kept as a record and not checked.
NEVER_BUILT: tuple[str, ...] = ("hydra",)


class UntrustedInputError(ValueError):
    """A file from elsewhere asked segssl to run code it does not allow."""


def is_allowed_target(target: str) -> bool:
    """Whether ``target`` names a class or function defined in an allowed module.

    A prefix alone is not enough: ``segssl.data.datamodule.os.system`` starts with an allowed
    prefix and reaches ``os.system`` through the module's imports. So the target is located as
    Hydra would (import the longest module prefix, then attributes), no attribute on the way may
    be a module, and the object found must be defined under an allowed prefix. Only modules
    under the allowed prefixes are ever imported here."""
    if not isinstance(target, str) or not target or any(c.isspace() for c in target):
        return False
    if ".." in target or target.startswith(".") or target.endswith("."):
        return False
    if target in ALLOWED_TARGETS:
        return True
    return target.startswith(ALLOWED_TARGET_PREFIXES) and _defined_in_allowed_module(target)


@functools.lru_cache(maxsize=256)
def _defined_in_allowed_module(target: str) -> bool:
    parts = target.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except Exception:  # noqa: BLE001 - not a module (or not importable here): try shorter
            continue
        break
    else:
        return False
    for attr in parts[cut:]:
        obj = getattr(obj, attr, None)
        if obj is None or inspect.ismodule(obj):
            return False
    if not (inspect.isclass(obj) or inspect.isroutine(obj)):
        return False
    return (str(getattr(obj, "__module__", "")) + ".").startswith(ALLOWED_TARGET_PREFIXES)


# Modules that moved: a config stored before the move names the old path. Only renames between
# allowed modules belong here, so upgrading a name never widens what can be built.
RENAMED_TARGET_PREFIXES: dict[str, str] = {"segssl.data.views.": "segssl.filters.views."}


def upgrade_targets(config: Any) -> Any:
    """A copy of a plain config with each moved ``_target_`` renamed to its current module."""
    if isinstance(config, Mapping):
        upgraded = {k: upgrade_targets(v) for k, v in config.items()}
        target = upgraded.get("_target_")
        if isinstance(target, str):
            for old, new in RENAMED_TARGET_PREFIXES.items():
                if target.startswith(old):
                    upgraded["_target_"] = new + target[len(old) :]
        return upgraded
    if isinstance(config, list | tuple):
        return [upgrade_targets(v) for v in config]
    return config


def disallowed_targets(config: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``(key path, target)`` of every ``_target_`` in ``config`` that is not allowed."""
    found: list[tuple[str, Any]] = []
    if isinstance(config, Mapping) or hasattr(config, "items"):
        for key, value in config.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if key == "_target_" and not is_allowed_target(value):
                found.append((path, value))
            else:
                found.extend(disallowed_targets(value, path))
    elif isinstance(config, Sequence) and not isinstance(config, str | bytes):
        for index, value in enumerate(config):
            found.extend(disallowed_targets(value, f"{prefix}[{index}]"))
    return found


def check_targets(config: Any, source: str | os.PathLike, prefix: str = "") -> None:
    """Refuse ``config`` (read from ``source``) if it names a callable off the allow-list; the
    error names the key (under ``prefix``, e.g. where in the file the config sits)."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(config):
        config = OmegaConf.to_container(config, resolve=False)
    if isinstance(config, Mapping):
        config = {k: v for k, v in config.items() if k not in NEVER_BUILT}
    bad = disallowed_targets(upgrade_targets(config), prefix)
    if bad:
        key, target = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise UntrustedInputError(
            f"{source}: refusing to build '{key}: {target}'{more}: segssl only instantiates "
            f"{allowed_text()}"
        )


def allowed_text() -> str:
    """The allow-list in words, for error messages and the README."""
    prefixes = ", ".join(f"{p}*" for p in ALLOWED_TARGET_PREFIXES)
    return f"targets {prefixes} and {', '.join(sorted(ALLOWED_TARGETS))}"


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's contents as tensors and plain data; never unpickles an object."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - every unreadable file gets the same clear message
        text = str(err)
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if found:
            raise UntrustedInputError(
                f"{path}: refused: it holds pickled Python objects ({found.group(1)}), not only "
                f"tensors and plain data; segssl loads checkpoints with weights_only=True and "
                f"never runs code from them"
            ) from err
        found = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        reason = found.group(1).strip() if found else (text.splitlines() or [repr(err)])[0]
        raise ValueError(
            f"{path}: cannot read as a PyTorch checkpoint ({reason}); damaged, not a "
            f"checkpoint, or holding data that weights_only=True does not load"
        ) from err
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path}: not a segssl checkpoint (a {type(checkpoint).__name__})")
    return checkpoint


def check_checkpoint(checkpoint: Mapping[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    """The stored segssl config of a loaded checkpoint, after checking every ``_target_`` a
    rebuild would instantiate: the run config and the method's hyper-parameters (the networks
    and optimiser are built from those)."""
    config = checkpoint.get("segssl_config")
    if not isinstance(config, Mapping) or not config:
        raise ValueError(f"{path}: not a segssl checkpoint (no stored 'segssl_config')")
    check_targets(config, path, prefix="segssl_config")
    check_targets(checkpoint.get("hyper_parameters") or {}, path, prefix="hyper_parameters")
    return upgrade_targets(dict(config))


def load_run_config(path: str | os.PathLike) -> dict[str, Any]:
    """The segssl config stored in a checkpoint, checked against the allow-list."""
    return check_checkpoint(load_checkpoint(path), path)
