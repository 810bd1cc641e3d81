"""Losses: segmentation losses, soft-label, consistency, combinations and the multi-head router."""

from polyhead.losses.balancing import (
    DynamicWeightAveraging,
    FixedWeights,
    LossBalancer,
    UncertaintyWeighting,
)
from polyhead.losses.boundary import BoundaryWeightedLoss, class_border_map
from polyhead.losses.combined import CombinedLoss
from polyhead.losses.consistency import HeadConsistencyLoss
from polyhead.losses.hard_label import ensure_ignore_index
from polyhead.losses.multihead import MultiHeadLoss
from polyhead.losses.segmentation import (
    CrossEntropyLoss,
    DiceLoss,
    FocalLoss,
    LovaszSoftmaxLoss,
    TverskyLoss,
)
from polyhead.losses.soft_label import SoftLabelLoss

__all__ = [
    "BoundaryWeightedLoss",
    "DynamicWeightAveraging",
    "FixedWeights",
    "LossBalancer",
    "UncertaintyWeighting",
    "CombinedLoss",
    "CrossEntropyLoss",
    "DiceLoss",
    "FocalLoss",
    "HeadConsistencyLoss",
    "LovaszSoftmaxLoss",
    "MultiHeadLoss",
    "SoftLabelLoss",
    "TverskyLoss",
    "class_border_map",
    "ensure_ignore_index",
]
