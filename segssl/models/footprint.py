"""What a network config takes and keeps, known from the config alone, without building the
network or importing torch: the input sizes it accepts and the activations one training step
keeps for backward. ``segssl plan`` sizes its batches from it and the settings check
(``segssl.runs.settings_check``) refuses sizes with it, both before any network exists.

``FOOTPRINTS`` is the one place a network reports its footprint, keyed by the ``_target_`` of
its config (MONAI's aliases included). segssl's own networks (``segssl.models.unet.UNet``,
``segssl.models.vnet.VNet``) are described here too, not as methods of their classes, because
reaching a class means importing torch and the planner must not. A network with no entry has
no footprint: its sizes are not checked and its memory not estimated (it reports bad sizes
itself when it runs).

The activation estimate is rough and documented (``activation_bytes``): tensors kept per
level x the feature maps of every resolution level, a floor of the real peak.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

SizeRule = Callable[[tuple[int, ...]], str | None]

# Tensors kept for the backward pass per resolution level, in units of one feature map of that
# level (the conv, norm and activation outputs of its encoder and decoder blocks), measured
# with torch.autograd.graph.saved_tensors_hooks on one training forward: MONAI BasicUNet
# 16..256 at 256 px 13.1 (19.9 at 64 px), AttentionUnet at 128 px 14.4, segssl VNet 10.0,
# segssl's SSL4MIS UNet (dropout masks kept too) 15.9 at 256 px (18.7 at 96, 22.7 at 64).
BASIC_UNET_TENSORS, ATTENTION_UNET_TENSORS, VNET_TENSORS, SSL4MIS_UNET_TENSORS = 13, 14, 10, 16


def _any_size(sides: tuple[int, ...]) -> None:
    return None


@dataclass(frozen=True)
class Footprint:
    """What one network config takes and keeps.

    Attributes:
        spatial_dims: 2 for slices (``data.image_size``), 3 for patches (``data.patch_size``).
        pyramid: feature channels at each resolution level (full, 1/2, 1/4, ...); empty when
            unknown (no memory estimate then).
        tensors_per_level: feature maps of a level kept for backward (measured, see above).
        size_rule: the problem with input sides the network cannot take, or None; it
            completes a sentence that starts with the network's name.
    """

    spatial_dims: int
    pyramid: tuple[int, ...]
    tensors_per_level: int
    size_rule: SizeRule = _any_size

    def sides(self, size: Any) -> tuple[int, ...] | None:
        """The input sides a size setting gives (an int for every side, or one per side), or
        None when it is not ``spatial_dims`` positive whole numbers."""
        sides = (size,) * self.spatial_dims if _is_int(size) else size
        if not isinstance(sides, Sequence) or isinstance(sides, str):
            return None
        if len(sides) != self.spatial_dims or not all(_is_int(s) and s > 0 for s in sides):
            return None
        return tuple(sides)

    def size_problem(self, sides: Sequence[int]) -> str | None:
        return self.size_rule(tuple(sides))


def footprint_of(model: Mapping[str, Any]) -> Footprint | None:
    """The footprint of a network config (with ``_target_``), or None for a network that
    reports none."""
    report = FOOTPRINTS.get(str(model.get("_target_", "")))
    return report(model) if report is not None else None


def activation_bytes(
    footprint: Footprint,
    sides: Sequence[int],
    batch: int,
    precision: str = "32",
    trained_networks: int = 1,
) -> int | None:
    """Rough activation memory of one training step on one device, or None when the pyramid
    is unknown: ``tensors_per_level`` x sum over levels of (channels x pixels of the level) x
    bytes per value x ``batch`` x networks trained with gradients. It leaves out weights,
    gradients, optimiser state (tens of MB here), the backward pass's transient buffers and
    library workspaces: close to a floor of the real peak, so it refuses only what cannot fit."""
    if not footprint.pyramid:
        return None
    values = sum(
        channels * math.prod(math.ceil(s / 2**level) for s in sides)
        for level, channels in enumerate(footprint.pyramid)
    )
    width = 2 if "16" in precision else 8 if "64" in precision else 4
    return footprint.tensors_per_level * values * width * batch * trained_networks


# -- size rules ------------------------------------------------------------------------------
def _multiples_of(factor: int, why: str, sides: tuple[int, ...]) -> str | None:
    if not any(s % factor for s in sides):
        return None
    nearest = "x".join(str(max(factor, round(s / factor) * factor)) for s in sides)
    return f"{why}: expected multiples of {factor} (e.g. {nearest})"


def _pooled_four_times(instance_norm: bool, sides: tuple[int, ...]) -> str | None:
    bottleneck = [s // 16 for s in sides]
    if min(bottleneck) >= 1 and not (instance_norm and math.prod(bottleneck) < 2):
        return None
    return (
        "max-pools 4 times (1/16) and its instance norm needs more than one pixel there: "
        "expected sides of at least 32"
    )


# -- the networks we configure (conf/model/) -------------------------------------------------
def _ssl4mis_unet(model: Mapping[str, Any]) -> Footprint:
    """``segssl.models.unet.UNet``: 2-D, pools 4 times, concatenates skips without padding."""
    return Footprint(
        spatial_dims=2,
        pyramid=tuple(int(f) for f in model.get("features", [16, 32, 64, 128, 256])[:5]),
        tensors_per_level=SSL4MIS_UNET_TENSORS,
        size_rule=partial(
            _multiples_of, 16, "pools 4 times and concatenates skips without padding"
        ),
    )


def _vnet(model: Mapping[str, Any]) -> Footprint:
    """``segssl.models.vnet.VNet``: 3-D, 5 levels doubling ``features``; pads any size to a
    multiple of 16 itself, so every size is taken."""
    base = int(model.get("features", 16))
    return Footprint(3, tuple(base * 2**level for level in range(5)), VNET_TENSORS)


def _basic_unet(model: Mapping[str, Any]) -> Footprint:
    """MONAI's ``BasicUNet``: pads odd sizes, but its instance norm needs more than one value
    at the 1/16 bottleneck."""
    norm = str(model.get("norm", "instance")).lower()
    return Footprint(
        spatial_dims=int(model.get("spatial_dims", 3)),  # MONAI's default is 3
        pyramid=tuple(int(f) for f in model.get("features", [32, 32, 64, 128, 256, 32])[:5]),
        tensors_per_level=BASIC_UNET_TENSORS,
        size_rule=partial(_pooled_four_times, "instance" in norm),
    )


def _attention_unet(model: Mapping[str, Any]) -> Footprint:
    """MONAI's ``AttentionUnet``: cannot pad, so every side is a multiple of its strides."""
    factor = math.prod(model.get("strides", [2, 2, 2, 2]))
    return Footprint(
        spatial_dims=int(model.get("spatial_dims", 3)),
        pyramid=tuple(int(c) for c in model.get("channels", [])),
        tensors_per_level=ATTENTION_UNET_TENSORS,
        size_rule=partial(_multiples_of, factor, f"down-samples by {factor} and cannot pad"),
    )


_BASIC_UNET_NAMES = ("BasicUNet", "BasicUnet", "Basicunet", "basicunet")  # MONAI's aliases
FOOTPRINTS: dict[str, Callable[[Mapping[str, Any]], Footprint]] = {
    "segssl.models.unet.UNet": _ssl4mis_unet,
    "segssl.models.vnet.VNet": _vnet,
    **{f"monai.networks.nets.{name}": _basic_unet for name in _BASIC_UNET_NAMES},
    **{f"monai.networks.nets.basic_unet.{name}": _basic_unet for name in _BASIC_UNET_NAMES},
    "monai.networks.nets.AttentionUnet": _attention_unet,
    "monai.networks.nets.attentionunet.AttentionUnet": _attention_unet,
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
