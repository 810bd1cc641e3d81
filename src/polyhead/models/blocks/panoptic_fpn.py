"""Panoptic-FPN semantic segmentation branch (Kirillov et al. 2019) on an FPN (Lin et al. 2017)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from polyhead.errors import ConfigError


def _conv_gn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.GroupNorm(math.gcd(32, out_channels), out_channels),
        nn.ReLU(inplace=True),
    )


class SemanticUpBranch(nn.Module):
    """``n_up`` stages of conv-GN-ReLU + 2x bilinear upsampling (one plain stage if 0)."""

    def __init__(self, in_channels: int, out_channels: int, n_up: int) -> None:
        super().__init__()
        chans = [in_channels] + [out_channels] * max(n_up, 1)
        self.convs = nn.ModuleList(
            _conv_gn_relu(a, b) for a, b in zip(chans[:-1], chans[1:], strict=True)
        )
        self.n_up = n_up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = conv(x)
            if self.n_up:
                x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return x


class PanopticFPNDecoder(nn.Module):
    """FPN levels P2..P{depth} merged into one 1/4-resolution map by the semantic branch.

    FPN: 1x1 lateral convs, top-down nearest upsampling + add, 3x3 output convs. Semantic
    branch: each P_i passes ``i - 2`` stages of conv-GN-ReLU + 2x upsampling (P2 one stage
    without upsampling) to reach stride 4; the maps are summed. Needs an undilated encoder
    (encoder level ``i`` at stride ``2**i``).
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        pyramid_channels: int = 256,
        segmentation_channels: int = 128,
    ) -> None:
        super().__init__()
        depth = len(encoder_channels) - 1
        self.levels = list(range(2, depth + 1))
        if len(self.levels) < 2 or any(encoder_channels[i] <= 0 for i in self.levels):
            raise ConfigError(
                f"panoptic_fpn needs encoder levels 2..{depth} (P2-P{depth}, at least two) with "
                f"channels; the encoder has {list(encoder_channels)}"
            )
        self.lateral = nn.ModuleList(
            nn.Conv2d(encoder_channels[i], pyramid_channels, 1) for i in self.levels
        )
        self.output = nn.ModuleList(
            nn.Conv2d(pyramid_channels, pyramid_channels, 3, padding=1) for _ in self.levels
        )
        self.branches = nn.ModuleList(
            SemanticUpBranch(pyramid_channels, segmentation_channels, i - 2) for i in self.levels
        )
        self.out_channels = segmentation_channels

    def pyramid(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """FPN outputs ``[P2, ..., P_depth]``."""
        laterals = [conv(features[i]) for conv, i in zip(self.lateral, self.levels, strict=True)]
        for j in range(len(laterals) - 2, -1, -1):
            top = F.interpolate(laterals[j + 1], size=laterals[j].shape[-2:], mode="nearest")
            laterals[j] = laterals[j] + top
        return [conv(p) for conv, p in zip(self.output, laterals, strict=True)]

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        maps = [branch(p) for branch, p in zip(self.branches, self.pyramid(features), strict=True)]
        size = maps[0].shape[-2:]
        out = maps[0]
        for m in maps[1:]:
            out = out + (
                m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear")
            )
        return out
