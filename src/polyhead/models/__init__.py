"""Models: shared encoders with several named heads, or one head as a whole model."""

from polyhead.models.blocks import ViTEncoder, register_vit_encoder
from polyhead.models.classifier import MultiHeadClassifier
from polyhead.models.decoders import DECODERS, build_decoder
from polyhead.models.dual_head import UPerNetDualHead
from polyhead.models.encoder import build_encoder, load_encoder_weights
from polyhead.models.heads import (
    HEAD_TYPES,
    HardHead,
    Head,
    HeadSpec,
    SoftHead,
    UncertaintyHead,
)
from polyhead.models.multihead import MultiHeadSegmentationModel
from polyhead.models.single import SegmentationModel

__all__ = [
    "DECODERS",
    "HeadSpec",
    "MultiHeadClassifier",
    "MultiHeadSegmentationModel",
    "HEAD_TYPES",
    "HardHead",
    "Head",
    "SoftHead",
    "UncertaintyHead",
    "SegmentationModel",
    "UPerNetDualHead",
    "ViTEncoder",
    "build_decoder",
    "build_encoder",
    "load_encoder_weights",
    "register_vit_encoder",
]
