"""Decoders and encoders written in polyhead where SMP lacks them."""

from polyhead.models.blocks.attention_unet import (
    AttentionGate,
    AttentionUNetDecoder,
    AttentionUNetDecoderBlock,
)
from polyhead.models.blocks.fcn import FCN_VARIANTS, FCNDecoder, UpsampleHead, level_stride
from polyhead.models.blocks.panoptic_fpn import PanopticFPNDecoder
from polyhead.models.blocks.setr import SETRPUPDecoder
from polyhead.models.blocks.vit_encoder import ViTEncoder, register_vit_encoder

__all__ = [
    "FCN_VARIANTS",
    "AttentionGate",
    "AttentionUNetDecoder",
    "AttentionUNetDecoderBlock",
    "FCNDecoder",
    "PanopticFPNDecoder",
    "SETRPUPDecoder",
    "UpsampleHead",
    "ViTEncoder",
    "level_stride",
    "register_vit_encoder",
]
