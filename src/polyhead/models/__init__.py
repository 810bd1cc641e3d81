"""Models: shared encoders with several named heads."""

from polyhead.models.decoders import DECODERS, build_decoder
from polyhead.models.dual_head import UPerNetDualHead
from polyhead.models.encoder import build_encoder, load_encoder_weights
from polyhead.models.heads import HeadSpec, SegmentationHeadBlock
from polyhead.models.multihead import MultiHeadSegmentationModel

__all__ = [
    "DECODERS",
    "HeadSpec",
    "MultiHeadSegmentationModel",
    "SegmentationHeadBlock",
    "UPerNetDualHead",
    "build_decoder",
    "build_encoder",
    "load_encoder_weights",
]
