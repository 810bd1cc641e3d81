"""Uncertainty distillation: teachers, cached targets, losses, student prediction, figures.

Names here are imported on first use, so ``polyhead --help`` stays quick.
"""

from __future__ import annotations

from polyhead.lazy import lazy_exports

_LAZY = {
    "UNCERTAINTY_BANDS": "polyhead.losses.uncertainty",
    "UNCERTAINTY_TARGETS": "polyhead.losses.uncertainty",
    "DistillTargets": "polyhead.distill.targets",
    "DistillationLoss": "polyhead.distill.losses",
    "EnsembleTeacher": "polyhead.distill.teacher",
    "ThreadRecipeLoss": "polyhead.distill.losses",
    "UncertaintyAgreement": "polyhead.distill.metrics",
    "UncertaintyRegressionLoss": "polyhead.losses.uncertainty",
    "pearson": "polyhead.distill.metrics",
    "spearman": "polyhead.distill.metrics",
    "stack_uncertainty": "polyhead.distill.teacher",
    "to_uncertainty": "polyhead.losses.uncertainty",
    "uncertainty_channels": "polyhead.losses.uncertainty",
    "write_distillation_targets": "polyhead.distill.targets",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
