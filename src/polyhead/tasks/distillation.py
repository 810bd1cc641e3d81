"""Uncertainty distillation: a student learns a teacher's mean prediction and its uncertainty."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from polyhead.distill.losses import DistillationLoss
from polyhead.distill.metrics import UncertaintyAgreement
from polyhead.distill.teacher import EnsembleTeacher, stack_uncertainty
from polyhead.errors import ConfigError
from polyhead.losses.soft_label import valid_soft_pixels
from polyhead.losses.uncertainty import UNCERTAINTY_BANDS, uncertainty_channels
from polyhead.metrics import SegmentationMetrics
from polyhead.models.heads import UncertaintyHead, uncertainty_at_class
from polyhead.models.multihead import MultiHeadSegmentationModel
from polyhead.tasks.base import BaseTask, log_losses, log_segmentation_metrics


def _head_with_role(model: MultiHeadSegmentationModel, roles: Sequence[str], what: str) -> str:
    for role in roles:
        names = model.heads_of_role(role)
        if names:
            return names[0]
    raise ConfigError(
        f"DistillationTask: the model needs a {what} head (role {' or '.join(roles)}); its heads "
        f"are { {n: h.role for n, h in model.heads.items()} }"
    )


def check_loss_matches_head(loss: nn.Module, head: UncertaintyHead) -> None:
    """Raise when the loss regresses the uncertainty in another space than the head maps back.

    A distillation loss names its ``transform``, ``activation`` and ``uncertainty_target``; the
    head owns them (they travel with the model into its checkpoint and its predictions).
    """
    wanted = {k: getattr(loss, k) for k in ("transform", "activation", "uncertainty_target")}
    have = {k: getattr(head, k) for k in wanted}
    if wanted != have:
        sets = ", ".join(f"{k}: {v}" for k, v in wanted.items() if have[k] != v)
        raise ConfigError(
            f"the uncertainty head {head.name!r} has {have} but {type(loss).__name__} regresses "
            f"{wanted}; set heads.{head.name}: {{{sets}}} in the model config"
        )


class DistillationTask(BaseTask):
    """Train a two-head student on cached or live teacher targets.

    Args:
        model: a `MultiHeadSegmentationModel` with a class-map head (role ``soft``, else
            ``hard``) and a head of role ``uncertainty``; the uncertainty head's
            ``transform``, ``activation`` and ``uncertainty_target`` must match the loss's.
        loss: `DistillationLoss` (default) or `ThreadRecipeLoss`; anything called as
            ``loss(seg_logits, unc_out, targets) -> (total, parts)`` that names its
            ``transform``, ``activation`` and ``uncertainty_target``.
        teacher: None (cached targets in the batch: ``soft`` and ``uncertainty``) or an
            `EnsembleTeacher` (from checkpoints: `polyhead.checkpoint.load_teacher`). A
            live teacher runs on every batch (``no_grad``) and its targets replace cached ones;
            it must expect the inputs as the student's data pipeline delivers them (same
            normalisation). It is not saved in the student's checkpoint.
        num_classes: classes for the metrics (default: the model's).
        ignore_index: hard-mask value for unlabelled pixels (metrics, optional CE).
        metric_samples: pixels kept for the Spearman correlation per validation run.

    Logs ``loss/{stage}``, ``loss/{stage}/{kl,ce,uncertainty}``, ``val/mIoU``,
    ``val/pixel_accuracy``, ``val/ECE`` (student class map vs hard mask) and
    ``val/uncertainty/{pearson,spearman,mean_pred,mean_target,std_pred,std_target}``: the
    student's map (its uncertainty head's own map; a per-class head read at the student's
    arg-max class) against the teacher's map of the same name (``std_winning`` when the head
    learns ``std_per_class``).
    """

    def __init__(
        self,
        model: MultiHeadSegmentationModel,
        loss: nn.Module | None = None,
        teacher: EnsembleTeacher | None = None,
        num_classes: int | None = None,
        ignore_index: int = 255,
        metric_samples: int = 200_000,
        **base: Any,
    ) -> None:
        super().__init__(**base)
        self.model = model
        self.seg_head = _head_with_role(model, ("soft", "hard"), "class-map")
        self.unc_head = _head_with_role(model, ("uncertainty",), "uncertainty")
        self.criterion = loss if loss is not None else DistillationLoss()
        check_loss_matches_head(self.criterion, model.heads[self.unc_head])
        if getattr(self.criterion, "ignore_index", "absent") is None:
            self.criterion.ignore_index = ignore_index
        self.ignore_index = ignore_index
        if teacher is not None and not isinstance(teacher, EnsembleTeacher):
            raise ConfigError(
                "DistillationTask: teacher must be an EnsembleTeacher (a config's list of "
                "checkpoint paths is loaded by polyhead.checkpoint.load_teacher in train)"
            )
        self._teacher = [teacher] if teacher is not None else []  # not a submodule: not saved
        classes = num_classes or model.classes
        self.val_metrics = SegmentationMetrics(classes, ignore_index)
        self.val_uncertainty = UncertaintyAgreement(max_samples=metric_samples)
        target = model.heads[self.unc_head].uncertainty_target
        self.eval_target = target if target in UNCERTAINTY_BANDS else "std_winning"

    @property
    def teacher(self) -> EnsembleTeacher | None:
        return self._teacher[0] if self._teacher else None

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.forward_heads(x)

    def _targets(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        targets = dict(batch["targets"])
        if self.teacher is not None:
            image = batch["image"]
            with torch.no_grad():
                stats = self.teacher.to(image.device)(image)
            targets["soft"] = stats["probs"]
            targets["uncertainty"] = stack_uncertainty(stats)
        return targets

    def compute_loss(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict, dict, dict]:
        """``(loss, parts, {seg, unc} outputs, targets)`` for a batch (teacher run if live)."""
        targets = self._targets(batch)
        outputs = self.model.forward_heads(batch["image"], [self.seg_head, self.unc_head])
        seg, unc = outputs[self.seg_head], outputs[self.unc_head]
        loss, parts = self.criterion(seg, unc, targets)
        return loss, parts, {"seg": seg, "unc": unc}, targets

    def _shared_step(self, batch: Mapping[str, Any], stage: str):
        loss, parts, out, targets = self.compute_loss(batch)
        log_losses(self, stage, loss, parts, batch["image"].shape[0])
        return loss, out["seg"], out["unc"], targets

    def training_step(self, batch, batch_idx):
        loss, *_ = self._shared_step(batch, "train")
        return loss

    def validation_step(self, batch, batch_idx):
        _, seg, unc, targets = self._shared_step(batch, "val")
        probs = self.model.heads[self.seg_head].activate(seg)
        self.val_metrics.update(probs, targets["hard"])
        k = targets["soft"].shape[1]
        target = targets["uncertainty"][:, uncertainty_channels(self.eval_target, k)]
        valid = valid_soft_pixels(targets["soft"].float()).unsqueeze(1)
        own = uncertainty_at_class(self.model.heads[self.unc_head].activate(unc), seg)
        self.val_uncertainty.update(own, target, valid)

    def on_validation_epoch_end(self) -> None:
        log_segmentation_metrics(self, self.val_metrics, "val")
        agreement = self.val_uncertainty.compute()
        self.val_uncertainty.reset()
        for key, value in agreement.items():
            self.log(f"val/uncertainty/{key}", torch.nan_to_num(value.float(), nan=0.0))
