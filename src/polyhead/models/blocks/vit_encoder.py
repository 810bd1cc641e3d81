"""Plain ViT encoders (timm) behind SMP's feature-list contract.

SMP 0.6 cannot wrap a plain ViT as a ``tu-`` encoder ("Unsupported model downsampling
pattern": every block is at the patch stride), and its ``TimmViTEncoder`` (used by DPT) returns
``(features, prefix_tokens)`` at a single stride. :class:`ViTEncoder` returns the list SMP
decoders expect: ``depth + 1`` maps, ``features[0]`` the input, ``features[i]`` at stride
``min(2**i, output_stride)``. Level 1 is an empty (0-channel) placeholder like timm's
transformer encoders report; levels 2..depth are the token maps of ``depth - 1`` evenly spaced
blocks (the last block for the deepest level), resized without parameters (ViTDet's simple
pyramid with interpolation): bilinear up below the patch stride, average-pooled above it.

Encoder names ``"vit-<timm name>"`` (e.g. ``"vit-test_vit"``, ``"vit-vit_small_patch16_224"``)
become buildable by SMP's ``get_encoder`` (and so polyhead's ``build_encoder``) once
:func:`register_vit_encoder` has been called with the name; ``build_encoder`` does so.
"""

from __future__ import annotations

from typing import Any

import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn.functional as F
from torch import nn

from polyhead.errors import ConfigError

VIT_PREFIX = "vit-"


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if x.shape[-2:] == size:
        return x
    if size[0] <= x.shape[-2] and size[1] <= x.shape[-1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ViTEncoder(nn.Module):
    """A timm ViT (any model with ``forward_intermediates``) as an SMP-style multi-level encoder.

    Args:
        name: timm model name (optionally with a pretrained tag).
        in_channels: input bands.
        depth: number of levels after the input (2-5).
        output_stride: stride of the deepest levels (a power of two >= 4); use the patch size
            (16) to keep a ViT's native resolution, e.g. for SETR.
        pretrained: load timm's pretrained weights (needs network).
        **timm_kwargs: passed to ``timm.create_model`` (e.g. ``img_size``, ``drop_path_rate``).
    """

    def __init__(
        self,
        name: str,
        in_channels: int = 3,
        depth: int = 5,
        output_stride: int = 32,
        pretrained: bool = False,
        **timm_kwargs: Any,
    ) -> None:
        super().__init__()
        if not 2 <= depth <= 5:
            raise ConfigError(f"vit encoder depth must be 2-5, got {depth}")
        if output_stride < 4 or output_stride & (output_stride - 1):
            raise ConfigError(
                f"vit encoder output_stride must be a power of two >= 4, got {output_stride}"
            )
        kwargs = {
            "dynamic_img_size": True,
            "dynamic_img_pad": True,
            "num_classes": 0,
            **timm_kwargs,
        }
        try:
            self.model = timm.create_model(
                name, pretrained=pretrained, in_chans=in_channels, **kwargs
            )
        except RuntimeError as err:  # timm: "Unknown model ..."
            raise ConfigError(f"vit encoder {name!r}: {err}") from err
        if not hasattr(self.model, "forward_intermediates") or not hasattr(
            self.model, "patch_embed"
        ):
            raise ConfigError(f"vit encoder {name!r} is not a plain ViT with forward_intermediates")
        n_blocks = len(self.model.blocks)
        levels = depth - 1
        self.block_indices = [int(n_blocks * (k + 1) / levels) - 1 for k in range(levels)]
        embed = self.model.embed_dim
        self.name = name
        self._in_channels = in_channels
        self._depth = depth
        self._output_stride = output_stride
        self._out_channels = [in_channels, 0] + [embed] * levels

    @property
    def out_channels(self) -> list[int]:
        return list(self._out_channels)

    @property
    def output_stride(self) -> int:
        return min(self._output_stride, 2**self._depth)

    def set_in_channels(self, in_channels: int, pretrained: bool = True) -> None:
        """Rebuild the patch embedding for ``in_channels`` bands (kernels repeated and rescaled)."""
        if in_channels == self._in_channels:
            return
        old = self.model.patch_embed.proj
        new = nn.Conv2d(
            in_channels,
            old.out_channels,
            old.kernel_size,
            old.stride,
            old.padding,
            bias=old.bias is not None,
        )
        with torch.no_grad():
            idx = torch.arange(in_channels) % old.in_channels
            new.weight.copy_(old.weight[:, idx] * (old.in_channels / in_channels))
            if old.bias is not None:
                new.bias.copy_(old.bias)
        self.model.patch_embed.proj = new
        self._in_channels = in_channels
        self._out_channels[0] = in_channels

    def make_dilated(self, output_stride: int) -> None:
        """SMP calls this for output_stride != 32; the stride is already set at construction."""
        if output_stride != self._output_stride:
            raise ConfigError(f"vit encoder was built for output_stride {self._output_stride}")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h, w = x.shape[-2:]
        tokens = self.model.forward_intermediates(
            x, indices=self.block_indices, intermediates_only=True
        )
        features = [x, x.new_zeros(x.shape[0], 0, h // 2, w // 2)]
        for level, feat in zip(range(2, self._depth + 1), tokens, strict=True):
            s = min(2**level, self._output_stride)
            features.append(_resize(feat, (h // s, w // s)))
        return features


def register_vit_encoder(encoder_name: str) -> bool:
    """Make ``"vit-<timm name>"`` known to SMP's ``get_encoder``; False for other names.

    Named pretrained weights are not registered (build with ``encoder_weights=None`` or a local
    weights file of the timm model).
    """
    if not encoder_name.startswith(VIT_PREFIX):
        return False
    registry = smp.encoders.encoders
    if encoder_name not in registry:
        registry[encoder_name] = {
            "encoder": ViTEncoder,
            "pretrained_settings": {},
            "params": {"name": encoder_name[len(VIT_PREFIX) :]},
        }
    return True
