"""Refuse training settings that cannot work, before anything is built.

Without this, ``trainer.max_steps=-1`` trains forever with a learning rate of 0 after step 1
(the poly schedule runs over ``max_steps``), ``val_check_interval=0`` ends in a
ZeroDivisionError, and a size the network cannot take fails deep inside MONAI after the data
has been loaded. Each problem is named with the setting and what is expected; all problems are
reported at once.

What a network takes and keeps comes from its footprint (``segssl.models.footprint``), how many
networks train with gradients from the method class (``trained_networks``); a network with no
footprint is not checked. The memory check is a rough, documented estimate (see
``segssl.models.footprint.activation_bytes``): it refuses only sizes whose activations alone
exceed the free memory of the device, where training could not start anyway.
``SEGSSL_SKIP_MEMORY_CHECK=1`` skips it.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from segssl.models import footprint as footprints
from segssl.models.footprint import Footprint

log = logging.getLogger(__name__)

MAX_SEED = 2**32 - 1  # numpy's seed range, used by seed_everything
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


def _footprint(cfg: DictConfig) -> Footprint | None:
    model = _get(cfg, "model")
    return footprints.footprint_of(model) if isinstance(model, dict) else None


def _training_size(cfg: DictConfig, dims: int) -> tuple[str, Any]:
    """The setting that gives the network's input size: slices for 2-D, patches for 3-D."""
    key = "data.image_size" if dims == 2 else "data.patch_size"
    return key, _get(cfg, key)


def _size_problems(cfg: DictConfig) -> list[str]:
    if (footprint := _footprint(cfg)) is None:
        return []  # a network we know nothing about: it will say so itself
    dims = footprint.spatial_dims
    key, value = _training_size(cfg, dims)
    sides = footprint.sides(value)
    what = "a positive int or 2 positive ints" if dims == 2 else f"{dims} positive ints"
    if sides is None:
        return [f"{key}={value!r}: expected {what} for {_model_name(cfg)}"]
    problem = footprint.size_problem(sides)
    return [f"{key}={value!r}: {_model_name(cfg)} {problem}"] if problem else []


# -- sizes the memory can hold ----------------------------------------------------------------
def _trained_networks(cfg: DictConfig) -> int:
    """Networks trained with gradients, as the method class declares (a mean teacher's teacher
    runs without them)."""
    from hydra.utils import get_class

    try:
        cls = get_class(str(_get(cfg, "method._target_")))
    except Exception:  # noqa: BLE001 - an unknown method is reported when it is built
        return 1
    return len(getattr(cls, "trained_networks", ())) or 1


def activation_bytes(cfg: DictConfig) -> int | None:
    """Rough activation memory of one training step on one device
    (``segssl.models.footprint.activation_bytes`` for the configured network, size, batch,
    precision and trained networks), or None for a network with no footprint."""
    if (footprint := _footprint(cfg)) is None:
        return None
    sides = footprint.sides(_training_size(cfg, footprint.spatial_dims)[1])
    batch = _get(cfg, "data.batch_size")
    if sides is None or not _is_int(batch) or batch <= 0:
        return None
    precision = str(_get(cfg, "trainer.precision") or "32")
    return footprints.activation_bytes(footprint, sides, batch, precision, _trained_networks(cfg))


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
    footprint = _footprint(cfg)
    key, value = _training_size(cfg, footprint.spatial_dims if footprint else 2)
    batch = _get(cfg, "data.batch_size")
    if needed > free:
        return [
            f"{key}={value!r} with data.batch_size={batch}: one training step needs about "
            f"{_gib(needed)} of activations (a rough floor, see segssl/models/footprint.py)"
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
