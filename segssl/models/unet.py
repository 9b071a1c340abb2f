"""The 2-D UNet of SSL4MIS, which BCP, ABD and UniMatch train on ACDC (features 16..256, encoder
dropout 0.05..0.5, bilinear up-sampling, 1.81M parameters with 4 classes).

Written from the layer list of SSL4MIS's ``networks/unet.py`` (the same network is in the BCP, ABD
and UniMatch repositories). Its encoder and decoder are separate calls (``encode``/``decode``)
because UniMatch perturbs the encoder features before decoding them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

Features = list[torch.Tensor]


class ConvBlock(nn.Sequential):
    """conv3x3 -> BN -> LeakyReLU -> Dropout -> conv3x3 -> BN -> LeakyReLU."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(),
            nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(),
        )


class UpBlock(nn.Module):
    """1x1 conv to the skip's width, bilinear x2 (align_corners, as SSL4MIS), concat, ConvBlock."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(in_channels, skip_channels, kernel_size=1)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.conv = ConvBlock(2 * skip_channels, out_channels, dropout=0.0)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(self.reduce(x))], dim=1))


class UNet(nn.Module):
    """SSL4MIS's 2-D UNet. Input height and width must be multiples of 16 (four poolings).
    That rule and its memory footprint are declared in ``segssl.models.footprint`` (read
    before the network is built, without torch): change them there with the layers.

    Args:
        in_channels: image channels.
        out_channels: classes (background included).
        features: widths of the five encoder levels.
        dropout: dropout probability of each encoder level (the decoder has none).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 4,
        features: Sequence[int] = (16, 32, 64, 128, 256),
        dropout: Sequence[float] = (0.05, 0.1, 0.2, 0.3, 0.5),
    ) -> None:
        super().__init__()
        features, dropout = list(features), list(dropout)
        if len(features) != 5 or len(dropout) != 5:
            raise ValueError(
                f"model.features={features} and model.dropout={dropout}: expected 5 values each "
                "(one per encoder level)"
            )
        self.encoder = nn.ModuleList(
            [ConvBlock(in_channels, features[0], dropout[0])]
            + [
                nn.Sequential(nn.MaxPool2d(2), ConvBlock(features[i - 1], features[i], dropout[i]))
                for i in range(1, 5)
            ]
        )
        self.decoder = nn.ModuleList(
            [UpBlock(features[i], features[i - 1], features[i - 1]) for i in range(4, 0, -1)]
        )
        self.out_conv = nn.Conv2d(features[0], out_channels, kernel_size=3, padding=1)

    def encode(self, x: torch.Tensor) -> Features:
        """The five encoder feature maps, full resolution first."""
        if x.ndim != 4 or x.shape[-1] % 16 or x.shape[-2] % 16:
            raise ValueError(
                f"UNet input of shape {tuple(x.shape)}: expected (B, C, H, W) with H and W "
                "multiples of 16 (set data.image_size to one)"
            )
        features = []
        for level in self.encoder:
            x = level(x)
            features.append(x)
        return features

    def decode(self, features: Features) -> torch.Tensor:
        """Logits from the five encoder feature maps."""
        x = features[-1]
        for block, skip in zip(self.decoder, reversed(features[:-1]), strict=True):
            x = block(x, skip)
        return self.out_conv(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def encoder_decoder(
    network: nn.Module,
) -> tuple[Callable[[torch.Tensor], Features], Callable[[Features], torch.Tensor]]:
    """The encoder and decoder of a 2-D UNet as two calls: ours, or MONAI's ``BasicUNet`` (the
    default ``model=unet2d``), whose submodules are called in the order of its own forward."""
    if callable(getattr(network, "encode", None)) and callable(getattr(network, "decode", None)):
        return network.encode, network.decode
    from monai.networks.nets import BasicUNet

    if isinstance(network, BasicUNet):

        def encode(x: torch.Tensor) -> Features:
            x0 = network.conv_0(x)
            x1 = network.down_1(x0)
            x2 = network.down_2(x1)
            x3 = network.down_3(x2)
            return [x0, x1, x2, x3, network.down_4(x3)]

        def decode(f: Features) -> torch.Tensor:
            u = network.upcat_4(f[4], f[3])
            u = network.upcat_3(u, f[2])
            u = network.upcat_2(u, f[1])
            return network.final_conv(network.upcat_1(u, f[0]))

        return encode, decode
    raise ValueError(
        f"{type(network).__name__} has no reachable encoder features (no encode()/decode()): "
        "use model=unet_ssl4mis (segssl.models.unet.UNet) or model=unet2d (MONAI BasicUNet)"
    )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
