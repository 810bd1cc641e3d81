"""Any registered decoder as a whole single-head segmentation model."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from polyhead.models.heads import NetworkHead
from polyhead.models.multihead import HeadSelection, MultiHeadSegmentationModel

HEAD = "main"


class SegmentationModel(MultiHeadSegmentationModel):
    """Encoder + one decoder head named ``main``; ``forward`` returns ``{"main": logits}``.

    Args:
        decoder: any name of :data:`polyhead.models.DECODERS` (``unet``, ``fcn8s``,
            ``attention_unet``, ``setr``, ``panoptic_fpn``, ...).
        encoder_name: an SMP encoder name, a ``tu-*`` timm name, or ``vit-<timm ViT name>``
            for a plain ViT (see :mod:`polyhead.models.blocks.vit_encoder`).
        encoder_depth, encoder_weights, in_channels, classes, encoder_output_stride,
        pad_to_stride: as for :class:`MultiHeadSegmentationModel`.
        **decoder_options: the decoder's options (e.g. ``decoder_channels``).
    """

    def __init__(
        self,
        decoder: str,
        encoder_name: str = "resnet34",
        encoder_depth: int = 5,
        encoder_weights: str | os.PathLike | None = None,
        in_channels: int = 3,
        classes: int = 1,
        encoder_output_stride: int = 32,
        pad_to_stride: bool = False,
        **decoder_options: Any,
    ) -> None:
        super().__init__(
            heads={HEAD: {"decoder": decoder, **decoder_options}},
            encoder_name=encoder_name,
            encoder_depth=encoder_depth,
            encoder_weights=encoder_weights,
            in_channels=in_channels,
            classes=classes,
            encoder_output_stride=encoder_output_stride,
            pad_to_stride=pad_to_stride,
        )
        self.decoder_name = decoder


class NetworkModel(HeadSelection, nn.Module):
    """Any network returning class logits ``[B, K, H, W]`` as a one-head polyhead model.

    Its head ``main`` learns hard masks; ``forward`` and ``forward_heads`` return
    ``{"main": logits}``. polyhead wraps a config's model in one when it is not a polyhead
    model (e.g. ``segmentation_models_pytorch.Unet``), in training and when loading.
    """

    def __init__(self, network: nn.Module, classes: int | None = None, in_channels: int = 3):
        super().__init__()
        self.heads = nn.ModuleDict({HEAD: NetworkHead(network, classes)})
        self.classes, self.in_channels = classes, in_channels
        self.inference_head = HEAD

    def forward_heads(self, x: torch.Tensor, heads: Sequence[str] | None = None) -> dict:
        return {HEAD: self.heads[HEAD](x)}

    def forward(self, x: torch.Tensor, heads: Sequence[str] | None = None) -> dict:
        return self.forward_heads(x, heads)


def as_polyhead_model(model: nn.Module) -> nn.Module:
    """``model`` if it keeps the polyhead contract (``forward_heads``), else a `NetworkModel`
    of it (classes and bands read from the network when it says them)."""
    if hasattr(model, "forward_heads"):
        return model
    classes = getattr(model, "classes", None) or getattr(model, "num_classes", None)
    return NetworkModel(model, classes, getattr(model, "in_channels", 3))
