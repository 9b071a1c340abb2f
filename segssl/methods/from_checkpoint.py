"""A method rebuilt from a checkpoint file from anywhere, for ``test`` and ``predict``.

The file is read once, with ``torch.load(weights_only=True)`` (see ``segssl.utils.trust``), and
everything a rebuild would use is checked before anything is built: every ``_target_`` of the
stored run config and the method's hyper-parameters is an exact name on the allow-list (Hydra's
special keys and interpolations cannot reach anything else), every number that sizes an
allocation is in range, and the weights are finite. The method is then made from those checked
hyper-parameters and the weights are loaded into it strictly, so weights of another model are a
clear error rather than a half-loaded network.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.utils import get_class

from segssl.methods.base import SegmentationMethod
from segssl.utils.trust import UntrustedInputError, check_checkpoint, load_checkpoint


@dataclass
class TrustedCheckpoint:
    """A checkpoint's contents whose stored config has passed the allow-list."""

    path: Path
    config: dict[str, Any]
    contents: dict[str, Any]


def read_checkpoint(path: str | os.PathLike) -> TrustedCheckpoint:
    """Load ``path`` as data and check what it would build (``check_checkpoint``); raises a
    clear error naming the file and the key otherwise."""
    path = Path(path).expanduser().resolve()
    contents = load_checkpoint(path)
    config = check_checkpoint(contents, path)
    return TrustedCheckpoint(path, config, contents)


def method_class(checkpoint: TrustedCheckpoint) -> type[SegmentationMethod]:
    """The method class named by the stored ``method._target_`` (already allow-listed)."""
    target = (checkpoint.config.get("method") or {}).get("_target_")
    if not target:
        raise ValueError(f"{checkpoint.path}: its stored config has no 'method._target_'")
    try:
        cls = get_class(target)
    except Exception as err:  # noqa: BLE001 - hydra raises several types for a bad path
        raise ValueError(
            f"{checkpoint.path}: method._target_={target!r} not found ({err})"
        ) from err
    if not (isinstance(cls, type) and issubclass(cls, SegmentationMethod)):
        raise UntrustedInputError(
            f"{checkpoint.path}: method._target_={target!r} is not a segssl method"
        )
    return cls


def build_method(checkpoint: TrustedCheckpoint) -> SegmentationMethod:
    """The stored method with the checkpoint's weights (on the CPU)."""
    cls = method_class(checkpoint)
    hparams = checkpoint.contents.get("hyper_parameters")
    weights = checkpoint.contents.get("state_dict")
    if not isinstance(hparams, dict) or not isinstance(weights, dict):
        raise ValueError(
            f"{checkpoint.path}: not a segssl training checkpoint (expected 'hyper_parameters' "
            f"and 'state_dict')"
        )
    try:
        method = cls(**hparams)
    except (TypeError, ValueError, KeyError) as err:
        raise ValueError(
            f"{checkpoint.path}: its hyper_parameters do not build a {cls.__name__} ({err})"
        ) from err
    method.on_load_checkpoint(checkpoint.contents)
    try:
        method.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"{checkpoint.path}: its weights do not fit the model of its stored config "
            f"({str(err).splitlines()[0]})"
        ) from err
    return method
