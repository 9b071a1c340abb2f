"""The 3-D VNet of the LA semi-supervised benchmarks (UA-MT, MC-Net, SS-Net...), so results are
comparable with theirs: 16 base filters doubled at each of 4 down-sampling stages, plain (not
residual) conv stages of 1/2/3/3/3 convolutions, batch norm + ReLU, transposed-conv up-sampling,
encoder features added (not concatenated) to the decoder; about 9.4M parameters. Its memory
footprint is declared in ``segssl.models.footprint`` (read before it is built, without torch)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# convolutions per stage, from the full-resolution stage down to the bottleneck
STAGE_DEPTHS = (1, 2, 3, 3, 3)


def conv_stage(in_channels: int, out_channels: int, depth: int) -> nn.Sequential:
    """``depth`` x (3x3x3 conv, batch norm, ReLU); the first conv changes the channel count."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [
            nn.Conv3d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1),
            nn.BatchNorm3d(out_channels),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


def resample(in_channels: int, out_channels: int, up: bool) -> nn.Sequential:
    """Halve (strided 2x2x2 conv) or double (2x2x2 transposed conv) the resolution."""
    conv = nn.ConvTranspose3d if up else nn.Conv3d
    return nn.Sequential(
        conv(in_channels, out_channels, 2, stride=2),
        nn.BatchNorm3d(out_channels),
        nn.ReLU(inplace=True),
    )


class VNet(nn.Module):
    """VNet returning logits ``(B, out_channels, *spatial)`` for input ``(B, in_channels, ...)``.

    Inputs whose sides are not multiples of 16 (the total down-sampling) are zero-padded at the
    far end and the logits cropped back, so any patch size works (e.g. a 24-voxel-deep test
    patch); the standard 112x112x80 patch needs no padding.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        features: int = 16,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"model.dropout={dropout}: expected a probability in [0, 1)")
        widths = [features * 2**i for i in range(len(STAGE_DEPTHS))]
        self.factor = 2 ** (len(widths) - 1)
        self.encoder = nn.ModuleList(
            conv_stage(in_channels if i == 0 else w, w, d)
            for i, (w, d) in enumerate(zip(widths, STAGE_DEPTHS, strict=True))
        )
        pairs = list(zip(widths[:-1], widths[1:], strict=True))
        self.down = nn.ModuleList(resample(a, b, up=False) for a, b in pairs)
        self.up = nn.ModuleList(resample(b, a, up=True) for a, b in reversed(pairs))
        self.decoder = nn.ModuleList(
            conv_stage(w, w, d)
            for w, d in reversed(list(zip(widths[:-1], STAGE_DEPTHS[:-1], strict=True)))
        )
        # UA-MT's Dropout3d(0.5) before the 1x1x1 output conv, when asked for
        self.dropout = nn.Dropout3d(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Conv3d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise ValueError(f"VNet: expected input (B, C, D, H, W), got shape {tuple(x.shape)}")
        size = x.shape[2:]
        pad = [(-s) % self.factor for s in size]
        if any(pad):
            # F.pad lists (before, after) pairs starting from the last axis
            x = F.pad(x, [p for amount in reversed(pad) for p in (0, amount)])
        skips: list[torch.Tensor] = []
        for i, stage in enumerate(self.encoder):
            x = stage(x)
            if i < len(self.down):
                skips.append(x)
                x = self.down[i](x)
        for up, stage, skip in zip(self.up, self.decoder, reversed(skips), strict=True):
            x = stage(up(x) + skip)
        logits = self.head(self.dropout(x))
        return logits[(..., *(slice(0, s) for s in size))]


def count_parameters(module: nn.Module) -> int:
    """Trainable parameters of ``module`` (the figure papers quote)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
