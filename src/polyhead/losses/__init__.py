"""Losses: soft-label, consistency, and the multi-head router."""

from polyhead.losses.consistency import HeadConsistencyLoss
from polyhead.losses.hard_label import ensure_ignore_index
from polyhead.losses.multihead import MultiHeadLoss
from polyhead.losses.soft_label import SoftLabelLoss

__all__ = ["HeadConsistencyLoss", "MultiHeadLoss", "SoftLabelLoss", "ensure_ignore_index"]
