"""FCN decoders (Long et al. 2015): class scores from the deepest levels, fused by upsample + add."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from polyhead.errors import ConfigError

#: variant -> number of encoder levels scored (deepest first)
FCN_VARIANTS = {"32s": 1, "16s": 2, "8s": 3}


def level_stride(level: int, output_stride: int) -> int:
    """Stride of encoder feature ``level`` (``features[level]``) for an encoder's output stride."""
    return min(2**level, output_stride)


class UpsampleHead(nn.Module):
    """Bilinear upsampling by a fixed factor (a segmentation head without parameters)."""

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = int(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale == 1:
            return x
        return F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)


class FCNDecoder(nn.Module):
    """FCN-32s / 16s / 8s skip architecture on any encoder's feature list.

    A 1x1 score layer maps each of the last one (32s), two (16s) or three (8s) encoder levels
    to class scores; coarser scores are upsampled bilinearly to the next level's size and added
    to its scores. The output holds class scores at the stride of the finest level used; the
    segmentation head upsamples them to the input size. Generic encoders lack VGG's fc6/fc7
    layers, so the deepest level first passes a 3x3 conv-BN-ReLU-dropout block of
    ``head_channels`` (torchvision's FCN head; ``head_channels=None`` scores it directly).
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        classes: int,
        variant: str = "8s",
        head_channels: int | None = 256,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if variant not in FCN_VARIANTS:
            raise ConfigError(f"fcn variant must be one of {sorted(FCN_VARIANTS)}, got {variant!r}")
        n_levels = FCN_VARIANTS[variant]
        deepest = len(encoder_channels) - 1
        self.levels = list(range(deepest, deepest - n_levels, -1))
        if self.levels[-1] < 1 or any(encoder_channels[i] <= 0 for i in self.levels):
            raise ConfigError(
                f"fcn {variant} scores encoder levels {self.levels} but the encoder's channels are "
                f"{list(encoder_channels)}; use a deeper encoder or a coarser variant"
            )
        self.variant = variant
        c_deep = encoder_channels[deepest]
        if head_channels:
            self.head: nn.Module = nn.Sequential(
                nn.Conv2d(c_deep, head_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(head_channels),
                nn.ReLU(inplace=True),
                nn.Dropout2d(dropout) if dropout else nn.Identity(),
            )
            c_deep = head_channels
        else:
            self.head = nn.Identity()
        in_channels = [c_deep] + [encoder_channels[i] for i in self.levels[1:]]
        self.score = nn.ModuleList(nn.Conv2d(c, classes, kernel_size=1) for c in in_channels)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        x = self.score[0](self.head(features[self.levels[0]]))
        for level, score in zip(self.levels[1:], self.score[1:], strict=True):
            skip = score(features[level])
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False) + skip
        return x
