"""Models: shared encoders with several named heads, or one head as a whole model."""

from polyhead.models.blocks import ViTEncoder, register_vit_encoder
from polyhead.models.classifier import MultiHeadClassifier
from polyhead.models.decoders import DECODERS, build_decoder
from polyhead.models.dual_head import UPerNetDualHead
from polyhead.models.encoder import build_encoder, load_encoder_weights
from polyhead.models.heads import (
    HEAD_TYPES,
    ClassificationHead,
    HardHead,
    Head,
    HeadSpec,
    ImageHead,
    MultiLabelHead,
    RegressionHead,
    SoftHead,
    UncertaintyHead,
)
from polyhead.models.multihead import MultiHeadSegmentationModel
from polyhead.models.single import NetworkModel, SegmentationModel, as_polyhead_model

__all__ = [
    "ClassificationHead",
    "DECODERS",
    "ImageHead",
    "MultiLabelHead",
    "RegressionHead",
    "HeadSpec",
    "MultiHeadClassifier",
    "MultiHeadSegmentationModel",
    "NetworkModel",
    "HEAD_TYPES",
    "HardHead",
    "Head",
    "SoftHead",
    "UncertaintyHead",
    "SegmentationModel",
    "UPerNetDualHead",
    "ViTEncoder",
    "as_polyhead_model",
    "build_decoder",
    "build_encoder",
    "load_encoder_weights",
    "register_vit_encoder",
]
