"""Uncertainty distillation: teachers, cached targets, losses, student prediction, figures."""

from polyhead.distill.losses import DistillationLoss, ThreadRecipeLoss
from polyhead.distill.metrics import UncertaintyAgreement, pearson, spearman
from polyhead.distill.targets import DistillTargets, write_distillation_targets
from polyhead.distill.teacher import EnsembleTeacher, stack_uncertainty
from polyhead.losses.uncertainty import (
    UNCERTAINTY_BANDS,
    UNCERTAINTY_TARGETS,
    UncertaintyRegressionLoss,
    to_uncertainty,
    uncertainty_channels,
)

__all__ = [
    "UNCERTAINTY_BANDS",
    "UNCERTAINTY_TARGETS",
    "DistillTargets",
    "DistillationLoss",
    "EnsembleTeacher",
    "ThreadRecipeLoss",
    "UncertaintyAgreement",
    "UncertaintyRegressionLoss",
    "pearson",
    "spearman",
    "stack_uncertainty",
    "to_uncertainty",
    "uncertainty_channels",
    "write_distillation_targets",
]
