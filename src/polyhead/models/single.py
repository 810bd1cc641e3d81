"""Any registered decoder as a whole single-head segmentation model."""

from __future__ import annotations

import os
from typing import Any

from polyhead.models.multihead import MultiHeadSegmentationModel

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
