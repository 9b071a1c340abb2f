"""What segssl trusts in a file from elsewhere: nothing that runs code.

A checkpoint is read with ``torch.load(weights_only=True)`` (tensors and plain data only: a
pickle that would build an arbitrary object is refused before it runs). A config stored in a
checkpoint or a run folder is instantiated only when every ``_target_`` names a callable on the
allow-list below; anything else is refused before anything is built."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

# Prefixes of the callables segssl's own configs instantiate (conf/**.yaml). A stored config may
# name these and nothing else.
ALLOWED_TARGET_PREFIXES: tuple[str, ...] = (
    "segssl.",
    "monai.networks.nets.",
    "torch.optim.",
    "torch.nn.",
    "pytorch_lightning.Trainer",
    "pytorch_lightning.callbacks.",
    "pytorch_lightning.loggers.",
    "lightning.pytorch.Trainer",
    "lightning.pytorch.callbacks.",
    "lightning.pytorch.loggers.",
)


class UntrustedInputError(ValueError):
    """A file from elsewhere asked segssl to run code it does not allow."""


def is_allowed_target(target: str) -> bool:
    if not isinstance(target, str) or not target or any(c.isspace() for c in target):
        return False
    if ".." in target or target.startswith(".") or target.endswith("."):
        return False
    return target.startswith(ALLOWED_TARGET_PREFIXES)


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


def check_targets(config: Any, source: str | os.PathLike) -> None:
    """Refuse ``config`` (read from ``source``) if it names a callable off the allow-list."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(config):
        config = OmegaConf.to_container(config, resolve=False)
    bad = disallowed_targets(config)
    if bad:
        key, target = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise UntrustedInputError(
            f"{source}: refusing to build '{key}: {target}'{more}: segssl only instantiates "
            f"targets under {', '.join(p.rstrip('.') for p in ALLOWED_TARGET_PREFIXES)}"
        )


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's contents as tensors and plain data; never unpickles an object."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - every unreadable file gets the same clear message
        text = str(err)
        if "weights_only" in text or "Unsupported global" in text or "Unsupported operand" in text:
            raise UntrustedInputError(
                f"{path}: refused: it holds pickled Python objects, not only tensors and plain "
                f"data ({text.splitlines()[0] if text else type(err).__name__}); segssl loads "
                f"checkpoints with weights_only=True and never runs code from them"
            ) from err
        raise ValueError(f"{path}: cannot read as a PyTorch checkpoint ({err})") from err
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path}: not a segssl checkpoint (a {type(checkpoint).__name__})")
    return checkpoint


def load_run_config(path: str | os.PathLike) -> dict[str, Any]:
    """The segssl config stored in a checkpoint, checked against the allow-list."""
    checkpoint = load_checkpoint(path)
    config = checkpoint.get("segssl_config")
    if not config:
        raise ValueError(f"{path}: not a segssl checkpoint (no stored 'segssl_config')")
    check_targets(config, path)
    return config
