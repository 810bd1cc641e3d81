"""SETR-PUP decoder (Zheng et al. 2021): progressive 2x upsampling of a ViT's last feature map."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from polyhead.errors import ConfigError


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of each pixel (the per-token LayerNorm of a ViT)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


class SETRUpStage(nn.Module):
    """3x3 conv-BN-ReLU, then 2x bilinear upsampling (``upsample=False``: conv only)."""

    def __init__(self, in_channels: int, out_channels: int, upsample: bool = True) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
        self.upsample = upsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return x


class SETRPUPDecoder(nn.Module):
    """Progressive upsampling: the last encoder feature map goes from ``in_stride`` to ``out_stride``.

    The feature map (a ViT's tokens at the patch stride, or any encoder's deepest level) is
    layer-normalised per pixel, then passes ``log2(in_stride / out_stride)`` stages of
    conv-BN-ReLU + 2x upsampling (one conv stage without upsampling if the strides are equal).
    ``out_stride=1`` is the paper's full-resolution variant; 4 is cheaper (the segmentation head
    upsamples the rest). On a ``vit-*`` encoder set ``encoder_output_stride`` to the patch size
    (16) so the decoder reads the tokens at their native resolution.
    """

    def __init__(
        self, in_channels: int, in_stride: int, channels: int = 256, out_stride: int = 4
    ) -> None:
        super().__init__()
        ratio = in_stride // out_stride if out_stride > 0 else 0
        if ratio < 1 or in_stride % out_stride or ratio & (ratio - 1):
            raise ConfigError(
                f"setr: decoder_out_stride {out_stride} must be a power-of-two divisor of the "
                f"encoder's output stride {in_stride}"
            )
        if in_channels <= 0:
            raise ConfigError("setr: the encoder's last level has no channels")
        n_up = int(math.log2(ratio))
        self.norm = ChannelLayerNorm(in_channels)
        chans = [in_channels] + [channels] * max(n_up, 1)
        self.stages = nn.Sequential(
            *(SETRUpStage(chans[i], chans[i + 1], upsample=n_up > 0) for i in range(max(n_up, 1)))
        )
        self.out_stride = out_stride

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.stages(self.norm(features[-1]))
