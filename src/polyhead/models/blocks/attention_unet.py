"""Attention U-Net decoder (Oktay et al. 2018): U-Net whose skips pass through attention gates."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from polyhead.errors import ConfigError


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class AttentionGate(nn.Module):
    """Additive attention gate: ``alpha = sigmoid(psi(relu(W_x skip + W_g gate)))``, ``skip * alpha``.

    The gating signal is the coarser decoder feature; it is projected by a 1x1 conv and
    resized to the skip's size, so ``alpha`` (one coefficient in [0, 1] per skip pixel) is
    computed at the skip's resolution.
    """

    def __init__(
        self, skip_channels: int, gate_channels: int, inter_channels: int | None = None
    ) -> None:
        super().__init__()
        inter = inter_channels or max(skip_channels // 2, 1)
        self.theta_x = nn.Sequential(
            nn.Conv2d(skip_channels, inter, 1, bias=False), nn.BatchNorm2d(inter)
        )
        self.phi_g = nn.Sequential(
            nn.Conv2d(gate_channels, inter, 1, bias=False), nn.BatchNorm2d(inter)
        )
        self.psi = nn.Sequential(nn.Conv2d(inter, 1, 1), nn.BatchNorm2d(1))

    def attention(self, skip: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """Attention coefficients ``[B, 1, H_skip, W_skip]`` in [0, 1]."""
        g = self.phi_g(gate)
        if g.shape[-2:] != skip.shape[-2:]:
            g = F.interpolate(g, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return torch.sigmoid(self.psi(F.relu(self.theta_x(skip) + g)))

    def forward(self, skip: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return skip * self.attention(skip, gate)


class AttentionUNetDecoderBlock(nn.Module):
    """Upsample the decoder feature to the skip's size, concat the gated skip, two 3x3 convs."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.gate = AttentionGate(skip_channels, in_channels) if skip_channels > 0 else None
        self.convs = nn.Sequential(
            _conv_bn_relu(in_channels + max(skip_channels, 0), out_channels),
            _conv_bn_relu(out_channels, out_channels),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is None:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        else:
            if self.gate is not None:
                skip = self.gate(skip, x)  # gated by the coarser decoder feature
            if x.shape[-2:] != skip.shape[-2:]:
                x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            if self.gate is not None:
                x = torch.cat([x, skip], dim=1)
        return self.convs(x)


class AttentionUNetDecoder(nn.Module):
    """U-Net decoder with attention-gated skips; output at stride 1 (input size).

    Stage ``i`` upsamples the decoder feature to the size of encoder level ``depth - i - 1``,
    gates that level with the (pre-upsampling) decoder feature and fuses both; the last stage
    has no skip and upsamples 2x. Encoder levels reported with 0 channels (timm's placeholder
    levels) give their size but no skip.
    """

    def __init__(self, encoder_channels: Sequence[int], decoder_channels: Sequence[int]) -> None:
        super().__init__()
        depth = len(encoder_channels) - 1
        if len(decoder_channels) != depth:
            raise ConfigError(
                f"attention_unet: decoder_channels needs {depth} entries (encoder_depth), "
                f"got {list(decoder_channels)}"
            )
        deep_first = list(encoder_channels[1:])[::-1]
        skips = deep_first[1:] + [0]
        ins = [deep_first[0], *decoder_channels[:-1]]
        self.blocks = nn.ModuleList(
            AttentionUNetDecoderBlock(i, s, o)
            for i, s, o in zip(ins, skips, decoder_channels, strict=True)
        )

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        deep_first = list(features[1:])[::-1]
        x, skips = deep_first[0], deep_first[1:]
        for i, block in enumerate(self.blocks):
            x = block(x, skips[i] if i < len(skips) else None)
        return x
