"""What segssl trusts in a file from elsewhere: nothing that runs code, nothing it cannot size.

A checkpoint is read with ``torch.load(weights_only=True)`` (tensors and plain data only: a
pickle that would build an arbitrary object is refused before it runs, and the error says it
holds pickled objects). A config stored in a checkpoint or a run folder is built only when

- every ``_target_`` is one of the exact names in ``ALLOWED_TARGETS`` (what may be built, not
  a module it lives in: no method reached through a class, no function imported into a module);
- Hydra's other special keys (``_args_``, ``_partial_``, ``_recursive_``, ``_convert_``) hold
  what Hydra expects of them, next to a ``_target_`` (any node they hold is checked the same);
- every interpolation is a reference to a node of the same config (outside ``hydra``), or one
  of ``oc.select`` (of such a node, with a plain default), ``hydra:runtime.*``/``hydra:job.*``,
  ``oc.env`` and ``now``: none makes a node (``${oc.create:...}`` or ``${oc.decode:...}``
  could make one that no check has seen);
- every number that sizes an allocation (classes, channels, features, image and patch sizes,
  batch sizes, workers) is a whole number in a sane range (``SIZE_LIMITS``);

and the weights of a checkpoint are finite. Anything else is refused before anything is built,
with an error naming the file and the key."""

from __future__ import annotations

import math
import os
import pickletools
import re
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

# What a stored config may build: exactly these classes and functions, each named where
# segssl's own configs (conf/**.yaml) name it, plus the networks and optimisers a method builds
# from its hyper-parameters. A new `_target_` in conf/ must be added here (tests/test_trust.py
# fails otherwise). Every entry is a module-level class or function, never an attribute of a
# class: `segssl.utils.checkpoint_io.AtomicCheckpointIO.save_checkpoint` writes any file.
ALLOWED_TARGETS: frozenset[str] = frozenset(
    {
        # methods (conf/method/)
        "segssl.methods.AdaptiveBidirectionalDisplacement",
        "segssl.methods.AdaptiveBidirectionalDisplacementBCP",
        "segssl.methods.AlternateDiverseTeaching",
        "segssl.methods.BidirectionalCopyPaste",
        "segssl.methods.CrossPseudoSupervision",
        "segssl.methods.MeanTeacher",
        "segssl.methods.Supervised",
        "segssl.methods.UniMatch",
        # networks (conf/model/, a method's hyper_parameters.model and model_2)
        "monai.networks.nets.AttentionUnet",
        "monai.networks.nets.BasicUNet",
        "segssl.models.unet.UNet",
        "segssl.models.vnet.VNet",
        # optimisers (conf/method/_base.yaml, a method's hyper_parameters.optimizer)
        "torch.optim.SGD",
        "torch.optim.Adam",
        "torch.optim.AdamW",
        # data (conf/data/) and training views (conf/filter/)
        "segssl.data.datamodule.SemiSupervisedDataModule",
        "segssl.filters.views.GaussianBlur",
        "segssl.filters.views.GaussianNoise",
        "segssl.filters.views.TwoViews",
        "segssl.filters.views.dsaif_views",
        # callbacks (conf/callbacks/)
        "segssl.utils.checkpoint_io.RunCheckpoint",
        "segssl.utils.callbacks.StepTimer",
        "segssl.utils.callbacks.TrainingViewsLogger",
        "segssl.utils.callbacks.ValidationOverlays",
        "segssl.utils.stop_on_signal.StopOnSignal",
        "pytorch_lightning.callbacks.LearningRateMonitor",
        "segssl.utils.progress.StepProgressBar",
        # the progress bar of runs stored before StepProgressBar (they must still resume)
        "pytorch_lightning.callbacks.TQDMProgressBar",
        # loggers (conf/logger/) and the trainer (conf/trainer/)
        "segssl.utils.loggers.appending_csv_logger",
        "segssl.utils.loggers.wandb_logger",
        "pytorch_lightning.Trainer",
    }
)
# Extra exact names a user trusts (comma-separated), e.g. a MONAI network their own config
# used: set in their own environment, so trusted like their own config.
TRUSTED_TARGETS_ENV = "SEGSSL_TRUSTED_TARGETS"
# Top-level keys of a stored run config that segssl never instantiates: Hydra's own settings
# (launcher, sweeper) recorded with the run. They are kept as a record and not checked; an
# interpolation may not reach into them (see _interpolation_problem).
NEVER_BUILT: tuple[str, ...] = ("hydra",)
# Hydra's special keys of instantiate and what each may hold.
_CONVERT_MODES = ("none", "partial", "object", "all")
_RESERVED_KEY = re.compile(r"^_[A-Za-z]\w*_$")
_DOTTED_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")

# Numbers a file supplies that size an allocation: key -> (smallest, largest) for the number
# or each number of a list. A list may hold at most _MAX_DIMS numbers for a size key, and the
# product of an image/patch size is bounded by _MAX_VOXELS (a few GB as float32 at most).
SIZE_LIMITS: dict[str, tuple[int, int]] = {
    "num_classes": (1, 1000),
    "in_channels": (1, 1000),
    "out_channels": (1, 1000),
    "features": (1, 4096),
    "channels": (1, 4096),
    "image_size": (1, 4096),
    "patch_size": (1, 4096),
    "stride": (1, 4096),
    "batch_size": (1, 4096),
    "labeled_batch_size": (1, 4096),
    "num_workers": (0, 256),
    "slices_per_volume": (1, 4096),
    "num_train_patients": (0, 100_000),
    "num_val_patients": (0, 100_000),
    "num_test_patients": (0, 100_000),
}
_SPATIAL = ("image_size", "patch_size")
_MAX_DIMS = 16
_MAX_VOXELS = 2**28
_MAX_CLASS_NAMES = 1000


class UntrustedInputError(ValueError):
    """A file from elsewhere asked segssl to run code, or to size something, it does not allow."""


def allowed_targets() -> frozenset[str]:
    """``ALLOWED_TARGETS`` and the exact names of ``$SEGSSL_TRUSTED_TARGETS``."""
    extra = os.environ.get(TRUSTED_TARGETS_ENV, "")
    names = {n.strip() for n in extra.split(",")}
    return ALLOWED_TARGETS | {n for n in names if _DOTTED_NAME.match(n)}


def is_allowed_target(target: Any) -> bool:
    """Whether ``target`` is exactly one of the allowed names. Nothing is imported to decide:
    the name itself is the permission, so no path through a module or a class can reach
    anything else."""
    return isinstance(target, str) and target in allowed_targets()


# -- moved modules -----------------------------------------------------------------------------
# Modules that moved: a config stored before the move names the old path. Only renames between
# allowed names belong here, so upgrading a name never widens what can be built.
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


# -- walking a config ----------------------------------------------------------------------------
def disallowed_targets(config: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``(key path, target)`` of every ``_target_`` in ``config`` that is not allowed."""
    return [
        (path, value)
        for path, key, value, _ in _walk_with_parent(_plain(config), prefix)
        if key == "_target_" and not is_allowed_target(value)
    ]


def _special_key_problem(node: Mapping, key: str, value: Any) -> str | None:
    """Why a Hydra special key ``key`` of ``node`` is refused, or None."""
    built = "_target_" in node
    if key == "_args_":
        if not built:
            return "_args_ without a _target_ builds nothing; refused"
        if isinstance(value, str) or not isinstance(value, Sequence):
            return "_args_ must be a list"
        return None
    if key in ("_partial_", "_recursive_"):
        if not isinstance(value, bool):
            return f"{key} must be true or false"
        if key == "_partial_" and not built:
            return "_partial_ without a _target_ builds nothing; refused"
        return None
    if key == "_convert_":
        if value not in _CONVERT_MODES:
            return f"_convert_ must be one of {', '.join(_CONVERT_MODES)}"
        return None
    return f"{key} is reserved by Hydra's instantiate and not one segssl's configs use"


# ${...} forms a file-supplied string may hold; anything else (oc.create, oc.decode, oc.select
# with a list or dict default, a custom resolver, a nested ${${..}}) is refused. Each ${ is
# checked on its own, so the default of oc.env may hold only a literal or an allowed
# interpolation.
_ALLOWED_INTERPOLATION = re.compile(
    r"\$\{(?:"
    r"(?!hydra\.)[A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*)*\}"  # a node of this config
    r"|hydra:(?:runtime|job)\.[\w.-]+\}"  # this run's own Hydra values
    r"|oc\.env:[A-Za-z_]\w*[,}]"  # an environment variable (a string, never a node)
    # a node of this config, or a literal default (no list, dict or nested interpolation)
    r"|oc\.select:(?!hydra\.)[A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*)*(?:,[^${}\[\]]*)?\}"
    r"|now:[^${}]*\}"  # the time (a string)
    r")"
)


def _interpolation_problem(text: str) -> str | None:
    for found in re.finditer(r"\$\{", text):
        if not _ALLOWED_INTERPOLATION.match(text, found.start()):
            return (
                "an interpolation other than a reference to this config's own nodes or "
                "oc.select (with a plain default), hydra:runtime/job, oc.env, now (a resolver "
                "could make a node no check has seen); refused"
            )
    return None


def _size_problem(key: str, value: Any) -> str | None:
    if key == "class_names":
        if isinstance(value, list | tuple) and len(value) > _MAX_CLASS_NAMES:
            return f"{len(value)} class names; at most {_MAX_CLASS_NAMES}"
        return None
    low, high = SIZE_LIMITS[key]
    if value is None or (isinstance(value, str) and "${" in value):
        return None  # unset, or resolved from a node that is checked itself
    numbers = list(value) if isinstance(value, list | tuple) else [value]
    if not numbers or len(numbers) > _MAX_DIMS:
        return f"expected a whole number or a list of 1 to {_MAX_DIMS} whole numbers"
    for number in numbers:
        if isinstance(number, str) and "${" in number:
            continue
        if type(number) is not int or not low <= number <= high:
            return f"expected whole numbers from {low} to {high}"
    if key in _SPATIAL:
        voxels = math.prod(n for n in numbers if type(n) is int)
        if voxels > _MAX_VOXELS:
            return f"{voxels} pixels per image; at most {_MAX_VOXELS}"
    return None


def config_problems(config: Any, prefix: str = "") -> list[tuple[str, Any, str]]:
    """``(key path, value, why)`` of everything in a plain ``config`` that a file may not ask
    for: a ``_target_`` off the list, a misused Hydra special key, an interpolation that could
    make a node, a size out of range."""
    problems: list[tuple[str, Any, str]] = []
    for path, key, value, parent in _walk_with_parent(config, prefix):
        why = None
        if key == "_target_":
            if not is_allowed_target(value):
                why = "target"
        elif isinstance(key, str) and _RESERVED_KEY.match(key):
            why = _special_key_problem(parent, key, value)
        elif key in SIZE_LIMITS or key == "class_names":
            why = _size_problem(str(key), value)
        if why is None and isinstance(value, str):
            why = _interpolation_problem(value)
        if why is not None:
            problems.append((path, value, why))
    return problems


def _walk_with_parent(config: Any, prefix: str) -> Iterator[tuple[str, Any, Any, Any]]:
    if isinstance(config, Mapping):
        for key, value in config.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            yield path, key, value, config
            yield from _walk_with_parent(value, path)
    elif isinstance(config, Sequence) and not isinstance(config, str | bytes):
        for index, value in enumerate(config):
            path = f"{prefix}[{index}]"
            yield path, index, value, config
            yield from _walk_with_parent(value, path)


def _plain(config: Any) -> Any:
    from omegaconf import OmegaConf

    if OmegaConf.is_config(config):
        return OmegaConf.to_container(config, resolve=False)
    return config


def check_targets(config: Any, source: str | os.PathLike, prefix: str = "") -> None:
    """Refuse ``config`` (read from ``source``) if it asks for anything ``config_problems``
    lists; the error names the file, the key (under ``prefix``, e.g. where in the file the
    config sits) and what is allowed. Hydra's own settings (``hydra:``) are not checked."""
    config = _plain(config)
    if isinstance(config, Mapping):
        config = {k: v for k, v in config.items() if k not in NEVER_BUILT}
    problems = config_problems(upgrade_targets(config), prefix)
    if not problems:
        return
    problems.sort(key=lambda p: p[2] != "target")  # what would be built first
    key, value, why = problems[0]
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    shown = _short(value)
    if why == "target":
        raise UntrustedInputError(
            f"{source}: refusing to build '{key}: {shown}'{more}: segssl builds only the "
            f"classes and functions its own configs name ({allowed_text()}); set "
            f"{TRUSTED_TARGETS_ENV}=NAME,... to trust more names"
        )
    raise UntrustedInputError(f"{source}: refusing '{key}: {shown}'{more}: {why}")


check_config = check_targets


def _short(value: Any, limit: int = 120) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def allowed_text() -> str:
    """The allow-list in words, for error messages and the README."""
    return ", ".join(sorted(allowed_targets()))


# -- checkpoints ---------------------------------------------------------------------------------
def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's contents as tensors and plain data; never unpickles an object. A file
    whose pickle names Python objects is refused saying so (and naming them), whatever words
    torch's own error uses."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - every unreadable file gets the same clear message
        text = str(err)
        objects = pickled_objects(path) if "Weights only load failed" in text else []
        named = re.search(r"(?:Unsupported global: |unsupported )GLOBAL (\S+)", text)
        if named and not objects:
            objects = [named.group(1)]
        if objects:
            shown = ", ".join(objects[:5]) + (" ..." if len(objects) > 5 else "")
            raise UntrustedInputError(
                f"{path}: refused: it holds pickled Python objects ({shown}), not only tensors "
                f"and plain data; segssl loads checkpoints with weights_only=True and never "
                f"runs code from them"
            ) from err
        raise ValueError(
            f"{path}: cannot read as a PyTorch checkpoint ({_torch_reason(text)}); damaged, not "
            f"a checkpoint, or holding data that weights_only=True does not load"
        ) from err
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path}: not a segssl checkpoint (a {type(checkpoint).__name__})")
    return checkpoint


def _torch_reason(text: str) -> str:
    for pattern in (r"WeightsUnpickler error:\s*(.+)", r"\n\n(Trying to load .+?)\n"):
        found = re.search(pattern, text)
        if found:
            return found.group(1).strip()
    return (text.splitlines() or ["unknown error"])[0]


_TEXT_OPS = {
    "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE",
    "SHORT_BINSTRING", "BINSTRING", "STRING",
}  # fmt: skip


def pickled_objects(path: str | os.PathLike) -> list[str]:
    """The Python objects (``module.name``) that the pickle(s) in ``path`` would import, other
    than what torch's weights-only loader allows; read with ``pickletools`` (nothing runs).
    Covers torch's zip format (``*/data.pkl``), its legacy format and a bare pickle."""
    try:
        with zipfile.ZipFile(path) as archive:
            streams = [archive.read(n) for n in archive.namelist() if n.endswith(".pkl")]
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        try:
            streams = [Path(path).read_bytes()]
        except OSError:
            return []
    safe = _weights_only_globals()
    found: list[str] = []
    for data in streams:
        for name in _pickle_globals(data):
            name = re.sub(r"^__builtin__\.", "builtins.", name)  # protocol 2's name
            if name not in safe and not name.startswith("torch.") and name not in found:
                found.append(name)
    return found


def _weights_only_globals() -> set[str]:
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        return set(_get_allowed_globals())
    except Exception:  # noqa: BLE001 - a private helper of torch: fall back to torch's own names
        return {"collections.OrderedDict"}


def _pickle_globals(data: bytes) -> list[str]:
    """Names imported by the pickles in ``data`` (one after another, as in torch's legacy
    format), found without unpickling: GLOBAL/INST name them; STACK_GLOBAL takes the last two
    strings pushed (or fetched from the memo)."""
    import io

    stream = io.BytesIO(data)
    names: list[str] = []
    for _ in range(8):  # the legacy format is a handful of pickles followed by raw storage
        start = stream.tell()
        recent: list[Any] = []
        memo: dict[Any, Any] = {}
        try:
            for op, arg, _pos in pickletools.genops(stream):
                if op.name in _TEXT_OPS:
                    recent.append(arg)
                elif op.name in ("BINGET", "LONG_BINGET", "GET"):
                    recent.append(memo.get(arg))
                elif op.name in ("BINPUT", "LONG_BINPUT", "PUT"):
                    memo[arg] = recent[-1] if recent else None
                elif op.name == "MEMOIZE":
                    memo[len(memo)] = recent[-1] if recent else None
                elif op.name in ("GLOBAL", "INST"):
                    names.append(str(arg).replace(" ", "."))
                    recent.append(None)
                elif op.name == "STACK_GLOBAL":
                    module, name = (recent[-2:] if len(recent) >= 2 else [None, None])[:2]
                    names.append(f"{module}.{name}")
                    recent.append(None)
                else:
                    recent.append(None)
                del recent[:-4]
        except Exception:  # noqa: BLE001 - not (or no longer) a pickle: stop reading
            break
        if stream.tell() == start or stream.tell() >= len(data):
            break
    return names


def nonfinite_weights(checkpoint: Mapping[str, Any]) -> list[str]:
    """Keys of the checkpoint's ``state_dict`` whose floating-point tensor holds NaN or Inf."""
    weights = checkpoint.get("state_dict")
    if not isinstance(weights, Mapping):
        return []
    bad = []
    for key, tensor in weights.items():
        if isinstance(tensor, torch.Tensor) and (tensor.is_floating_point() or tensor.is_complex()):
            if not bool(torch.isfinite(tensor).all()):
                bad.append(str(key))
    return bad


def check_checkpoint(checkpoint: Mapping[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    """The stored segssl config of a loaded checkpoint, after checking everything a rebuild
    would use: the run config and the method's hyper-parameters (the networks and optimiser
    are built from those; ``check_targets``), and the weights (NaN or Inf is refused: such a
    model predicts nothing and would test to Dice 0 without a word)."""
    config = checkpoint.get("segssl_config")
    if not isinstance(config, Mapping) or not config:
        raise ValueError(f"{path}: not a segssl checkpoint (no stored 'segssl_config')")
    check_targets(config, path, prefix="segssl_config")
    hparams = checkpoint.get("hyper_parameters") or {}
    check_targets(hparams, path, prefix="hyper_parameters")
    bad = nonfinite_weights(checkpoint)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise UntrustedInputError(
            f"{path}: refused: its weights hold NaN or Inf ({shown}); the training that wrote "
            f"it diverged or the file was altered. Use an earlier checkpoint of the run"
        )
    return upgrade_targets(dict(config))


def load_run_config(path: str | os.PathLike) -> dict[str, Any]:
    """The segssl config stored in a checkpoint, checked (``check_checkpoint``)."""
    return check_checkpoint(load_checkpoint(path), path)
