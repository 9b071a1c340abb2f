"""segssl's speed options of a model config (``model.channels_last``, ``model.compile``): not
arguments of the network, read by the method that runs it (``SegmentationMethod``)."""

from __future__ import annotations

from typing import Any

from torch import nn

# torch.compile modes; "reduce-overhead" records CUDA graphs (one launch per network call)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
SPEED_KEYS = ("channels_last", "compile")


def channels_last_option(value: Any) -> bool | str:
    """``model.channels_last``: true, false, or ``auto`` (NHWC on a CUDA device, for 2-D
    networks: faster convolutions with bf16 tensor cores; contiguous elsewhere)."""
    if isinstance(value, bool) or value == "auto":
        return value
    raise ValueError(f"model.channels_last={value!r}: expected true, false or auto")


def compile_mode(value: Any) -> str | None:
    """``model.compile``: false (eager), true (``torch.compile``'s default mode) or a mode name,
    ``reduce-overhead`` being the CUDA-graphs option. None means eager."""
    if value is False or value is None:
        return None
    if value is True:
        return "default"
    if value in COMPILE_MODES:
        return str(value)
    raise ValueError(
        f"model.compile={value!r}: expected false, true or a torch.compile mode {COMPILE_MODES} "
        "(reduce-overhead: CUDA graphs)"
    )


def use_channels_last(option: bool | str, network: nn.Module, device_type: str) -> bool:
    """Whether ``network`` runs channels-last: as asked, or under ``auto`` on CUDA and only for
    2-D networks (channels-last is defined for 4-D tensors; a 3-D network has 5-D weights)."""
    if option == "auto":
        return device_type == "cuda" and all(p.ndim != 5 for p in network.parameters())
    return bool(option)
