"""Refuse training settings that cannot work, before anything is built.

Without this, ``trainer.max_steps=-1`` trains forever with a learning rate of 0 after step 1
(the poly schedule runs over ``max_steps``), ``val_check_interval=0`` ends in a
ZeroDivisionError, and a size the network cannot take fails deep inside MONAI after the data
has been loaded. Each problem is named with the setting and what is expected; all problems are
reported at once.

The memory check is a rough, documented estimate (see ``activation_bytes``): it refuses only
sizes whose activations alone exceed the free memory of the device, where training could not
start anyway. ``SEGSSL_SKIP_MEMORY_CHECK=1`` skips it.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

MAX_SEED = 2**32 - 1  # numpy's seed range, used by seed_everything
# Tensors kept for the backward pass per resolution level, in units of one feature map of that
# level (the conv, norm and activation outputs of its encoder and decoder blocks), measured
# with torch.autograd.graph.saved_tensors_hooks on one training forward: MONAI BasicUNet
# 16..256 at 256 px 13.1 (19.9 at 64 px), AttentionUnet at 128 px 14.4, segssl VNet 10.0,
# segssl's SSL4MIS UNet (dropout masks kept too) 15.9 at 256 px (18.7 at 96, 22.7 at 64).
TENSORS_PER_LEVEL = {"BasicUNet": 13, "AttentionUnet": 14, "VNet": 10, "SSL4MISUNet": 16}
# refuse above the free memory; warn above this share of it
WARN_SHARE = 0.8


class SettingsError(ValueError):
    """Settings that cannot work; the message names each one and what it expects."""


def check_training_settings(cfg: DictConfig) -> None:
    """Raise ``SettingsError`` naming every setting of a ``train`` config that cannot work;
    warn about those that work but are probably not meant (validation that never runs)."""
    problems = [*_schedule_problems(cfg), *_seed_problems(cfg), *_size_problems(cfg)]
    if not problems:
        problems = _memory_problems(cfg)
    if problems:
        raise SettingsError("settings that cannot work:\n  - " + "\n  - ".join(problems))


def _get(cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key, default=None)
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _schedule_problems(cfg: DictConfig) -> list[str]:
    problems = []
    max_steps = _get(cfg, "trainer.max_steps")
    if not _is_int(max_steps) or max_steps <= 0:
        problems.append(
            f"trainer.max_steps={max_steps!r}: expected a positive whole number of training "
            "steps; the poly learning-rate schedule (and any consistency ramp-up) runs over "
            "max_steps, so -1 (no limit) would train forever at a learning rate of 0"
        )
    interval = _get(cfg, "trainer.val_check_interval")
    if interval is None:
        return problems
    if _is_int(interval):
        if interval <= 0:
            problems.append(
                f"trainer.val_check_interval={interval}: expected a positive number of "
                "training steps between validations"
            )
        elif _is_int(max_steps) and 0 < max_steps < interval:
            log.warning(
                "trainer.val_check_interval=%d > trainer.max_steps=%d: validation never runs, "
                "so no checkpoint is selected on validation and the last one is tested",
                interval,
                max_steps,
            )
    elif not isinstance(interval, float) or not 0.0 < interval <= 1.0:
        problems.append(
            f"trainer.val_check_interval={interval!r}: expected a positive whole number of "
            "steps, or a fraction of an epoch in (0, 1]"
        )
    return problems


def _seed_problems(cfg: DictConfig) -> list[str]:
    seed = _get(cfg, "seed")
    if _is_int(seed) and 0 <= seed <= MAX_SEED:
        return []
    return [f"seed={seed!r}: expected a whole number in 0..{MAX_SEED}"]


# -- sizes the network can take ---------------------------------------------------------------
def _model_name(cfg: DictConfig) -> str:
    from hydra.core.hydra_config import HydraConfig

    target = str(_get(cfg, "model._target_") or "")
    choice = None
    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get("model")
    return f"model={choice} ({target})" if choice else f"model {target}"


_ARCHITECTURES = {"basicunet": "BasicUNet", "attentionunet": "AttentionUnet", "vnet": "VNet"}


def _architecture(model: dict[str, Any]) -> str | None:
    """Which of the networks this module knows the config builds (MONAI aliases included)."""
    target = str(model.get("_target_", ""))
    if target == "segssl.models.unet.UNet":  # not MONAI's UNet, a different network
        return "SSL4MISUNet"
    return _ARCHITECTURES.get(target.rsplit(".", 1)[-1].lower())


def _spatial_dims(model: dict[str, Any]) -> int | None:
    architecture = _architecture(model)
    if architecture == "VNet":
        return 3
    if architecture == "SSL4MISUNet":
        return 2
    if architecture is not None:
        return int(model.get("spatial_dims", 3))  # MONAI's default is 3
    return None


def _training_size(cfg: DictConfig, dims: int) -> tuple[str, Any]:
    """The setting that gives the network's input size: slices for 2-D, patches for 3-D."""
    key = "data.image_size" if dims == 2 else "data.patch_size"
    return key, _get(cfg, key)


def _as_sides(value: Any, dims: int) -> tuple[int, ...] | None:
    sides = (value,) * dims if _is_int(value) else value
    if not isinstance(sides, Sequence) or isinstance(sides, str) or len(sides) != dims:
        return None
    if not all(_is_int(s) and s > 0 for s in sides):
        return None
    return tuple(sides)


def _size_problems(cfg: DictConfig) -> list[str]:
    model = _get(cfg, "model")
    if not isinstance(model, dict) or (dims := _spatial_dims(model)) is None:
        return []  # a network we know nothing about: it will say so itself
    key, value = _training_size(cfg, dims)
    sides = _as_sides(value, dims)
    what = "a positive int or 2 positive ints" if dims == 2 else f"{dims} positive ints"
    if sides is None:
        return [f"{key}={value!r}: expected {what} for {_model_name(cfg)}"]
    architecture = _architecture(model)
    if architecture == "AttentionUnet":
        factor = math.prod(model.get("strides", [2, 2, 2, 2]))
        if any(s % factor for s in sides):
            return [
                f"{key}={value!r}: {_model_name(cfg)} down-samples by {factor} and cannot pad: "
                f"expected multiples of {factor} (e.g. {_nearest(sides, factor)})"
            ]
    elif architecture == "SSL4MISUNet" and any(s % 16 for s in sides):
        return [
            f"{key}={value!r}: {_model_name(cfg)} pools 4 times and concatenates skips without "
            f"padding: expected multiples of 16 (e.g. {_nearest(sides, 16)})"
        ]
    elif architecture == "BasicUNet":
        norm = str(model.get("norm", "instance")).lower()
        bottleneck = [s // 16 for s in sides]
        if min(bottleneck) < 1 or ("instance" in norm and math.prod(bottleneck) < 2):
            return [
                f"{key}={value!r}: {_model_name(cfg)} max-pools 4 times (1/16) and its "
                f"instance norm needs more than one pixel there: expected sides of at least 32"
            ]
    # VNet pads any size to a multiple of 16 (segssl/models/vnet.py)
    return []


def _nearest(sides: tuple[int, ...], factor: int) -> str:
    return "x".join(str(max(factor, round(s / factor) * factor)) for s in sides)


# -- sizes the memory can hold ----------------------------------------------------------------
def _feature_pyramid(model: dict[str, Any]) -> list[int] | None:
    """Channels at each resolution level (full, 1/2, 1/4, ...) of a network we know."""
    architecture = _architecture(model)
    if architecture == "BasicUNet":
        return [int(f) for f in model.get("features", [32, 32, 64, 128, 256, 32])[:5]]
    if architecture == "AttentionUnet":
        return [int(c) for c in model.get("channels", [])] or None
    if architecture == "SSL4MISUNet":
        return [int(f) for f in model.get("features", [16, 32, 64, 128, 256])[:5]]
    if architecture == "VNet":
        base = int(model.get("features", 16))
        return [base * 2**level for level in range(5)]
    return None


def _trained_networks(cfg: DictConfig) -> int:
    """Networks trained with gradients (a mean teacher's teacher runs without them)."""
    from hydra.utils import get_class

    from segssl.methods.base import SegmentationMethod

    try:
        cls = get_class(str(_get(cfg, "method._target_")))
    except Exception:  # noqa: BLE001 - an unknown method is reported when it is built
        return 1
    declared = getattr(cls, "trained_networks", None)  # a method whose trainable() is partial
    if isinstance(declared, int) and declared > 0:
        return declared
    names = getattr(cls, "network_names", ("net",))
    overridden = getattr(cls, "trainable", None) is not SegmentationMethod.trainable
    return 1 if overridden else len(names)


def activation_bytes(cfg: DictConfig) -> int | None:
    """Rough activation memory of one training step on one device, or None for an unknown
    network: ``TENSORS_PER_LEVEL`` x sum over levels of (channels x pixels of the level) x
    bytes per value x ``data.batch_size`` x trained networks. It leaves out weights, gradients,
    optimiser state (tens of MB here), the backward pass's transient buffers and library
    workspaces: close to a floor of the real peak, so it refuses only what cannot fit."""
    model = _get(cfg, "model")
    if not isinstance(model, dict) or (dims := _spatial_dims(model)) is None:
        return None
    pyramid = _feature_pyramid(model)
    sides = _as_sides(_training_size(cfg, dims)[1], dims)
    batch = _get(cfg, "data.batch_size")
    if pyramid is None or sides is None or not _is_int(batch) or batch <= 0:
        return None
    values = sum(
        channels * math.prod(math.ceil(s / 2**level) for s in sides)
        for level, channels in enumerate(pyramid)
    )
    precision = str(_get(cfg, "trainer.precision") or "32")
    width = 2 if "16" in precision else 8 if "64" in precision else 4
    kept = TENSORS_PER_LEVEL[_architecture(model) or ""]
    return kept * values * width * batch * _trained_networks(cfg)


def available_bytes(cfg: DictConfig) -> tuple[int, str] | None:
    """Free memory of the device training will use, and its name; None when unknown."""
    accelerator = str(_get(cfg, "trainer.accelerator") or "auto").lower()
    strategy = str(_get(cfg, "trainer.strategy") or "")
    if accelerator in ("gpu", "cuda", "auto"):
        import torch

        if "fork" in strategy or "notebook" in strategy:
            return None  # asking would initialise CUDA before the fork
        if torch.cuda.is_available():
            free, _ = torch.cuda.mem_get_info(0)
            return int(free), f"free memory of {torch.cuda.get_device_name(0)}"
        if accelerator != "auto":
            return None
    if accelerator not in ("cpu", "auto"):
        return None
    return _available_ram()


def _available_ram() -> tuple[int, str] | None:
    meminfo = Path("/proc/meminfo")
    if not meminfo.is_file():
        return None
    found = re.search(r"^MemAvailable:\s+(\d+) kB", meminfo.read_text(), re.MULTILINE)
    if not found:
        return None
    free, where = int(found[1]) * 1024, "available RAM"
    # a container's own limit (cgroup v2), when lower than the machine's
    limit, usage = Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.current")
    try:
        if limit.is_file() and limit.read_text().strip() != "max":
            left = int(limit.read_text()) - int(usage.read_text())
            if left < free:
                free, where = left, "memory left under this container's limit"
    except (OSError, ValueError):
        pass
    return free, where


def _memory_problems(cfg: DictConfig) -> list[str]:
    if os.environ.get("SEGSSL_SKIP_MEMORY_CHECK", "") not in ("", "0"):
        return []
    needed = activation_bytes(cfg)
    found = available_bytes(cfg) if needed else None
    if not needed or not found:
        return []
    free, where = found
    dims = _spatial_dims(_get(cfg, "model")) or 2
    key, value = _training_size(cfg, dims)
    batch = _get(cfg, "data.batch_size")
    if needed > free:
        return [
            f"{key}={value!r} with data.batch_size={batch}: one training step needs about "
            f"{_gib(needed)} of activations (a rough floor, see segssl/utils/settings_check.py)"
            f" but the {where} is {_gib(free)}; use a smaller size or batch "
            "(SEGSSL_SKIP_MEMORY_CHECK=1 tries anyway)"
        ]
    if needed > WARN_SHARE * free:
        log.warning(
            "%s=%r with data.batch_size=%s needs about %s of activations; the %s is %s",
            key,
            value,
            batch,
            _gib(needed),
            where,
            _gib(free),
        )
    return []


def _gib(size: int) -> str:
    return f"{size / 2**30:.1f} GiB"
