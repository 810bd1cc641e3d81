"""Uncertainty distillation: a student learns a teacher's mean prediction and its uncertainty."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from polyhead.distill.losses import DistillationLoss, to_uncertainty
from polyhead.distill.metrics import UncertaintyAgreement
from polyhead.distill.teacher import (
    UNCERTAINTY_BANDS,
    EnsembleTeacher,
    stack_uncertainty,
    uncertainty_channels,
)
from polyhead.errors import ConfigError
from polyhead.losses.soft_label import valid_soft_pixels
from polyhead.metrics import SegmentationMetrics
from polyhead.models.multihead import MultiHeadSegmentationModel
from polyhead.tasks.base import BaseTask

#: key under which the run config records how to read the student's uncertainty head
CONFIG_KEY = "distillation"


def _head_with_role(model: MultiHeadSegmentationModel, roles: Sequence[str], what: str) -> str:
    for role in roles:
        names = [n for n, r in model.head_roles.items() if r == role]
        if names:
            return names[0]
    raise ConfigError(
        f"DistillationTask: the model needs a {what} head (role {' or '.join(roles)}); its heads "
        f"are {model.head_roles}"
    )


def student_uncertainty(
    seg_logits: torch.Tensor, unc_out: torch.Tensor, spec: Mapping[str, Any]
) -> torch.Tensor:
    """The student's uncertainty map ``[B, 1, H, W]`` from its two heads' outputs.

    ``spec`` is the ``distillation`` entry of a student's run config (``transform``,
    ``activation``); a per-class head is read at the student's own arg-max class.
    """
    u = to_uncertainty(
        unc_out,
        spec.get("transform", "sqrt"),
        spec.get("activation", "none"),
        spec.get("log_eps", 1e-3),
    )
    if u.shape[1] > 1:
        u = u.gather(1, seg_logits.argmax(dim=1, keepdim=True))
    return u


class DistillationTask(BaseTask):
    """Train a two-head student on cached or live teacher targets.

    Args:
        model: a `MultiHeadSegmentationModel` with a class-map head (role ``soft``, else
            ``hard``) and a head of role ``uncertainty``.
        loss: `DistillationLoss` (default) or `ThreadRecipeLoss`; anything called as
            ``loss(seg_logits, unc_out, targets) -> (total, parts)`` with ``to_uncertainty``.
        teacher: None (cached targets in the batch: ``soft`` and ``uncertainty``), an
            `EnsembleTeacher`, or checkpoint paths for `EnsembleTeacher.from_checkpoints`. A
            live teacher runs on every batch (``no_grad``) and its targets replace cached ones;
            it must expect the inputs as the student's data pipeline delivers them (same
            normalisation). It is not saved in the student's checkpoint.
        num_classes: classes for the metrics (default: the model's).
        ignore_index: hard-mask value for unlabelled pixels (metrics, optional CE).
        metric_samples: pixels kept for the Spearman correlation per validation run.

    Logs ``loss/{stage}``, ``loss/{stage}/{kl,ce,uncertainty}``, ``val/mIoU``,
    ``val/pixel_accuracy``, ``val/ECE`` (student class map vs hard mask) and
    ``val/uncertainty/{pearson,spearman,mean_pred,mean_target,std_pred,std_target}``: the student's map (a
    per-class head read at its arg-max class) against the teacher's ``uncertainty_target``
    (``std_winning`` when the target is per class). The run config gets a ``distillation``
    entry (heads, transform, activation) so predictions can be turned back into uncertainty.
    """

    def __init__(
        self,
        model: MultiHeadSegmentationModel,
        loss: nn.Module | None = None,
        teacher: EnsembleTeacher | Sequence[str | Path] | None = None,
        num_classes: int | None = None,
        ignore_index: int = 255,
        metric_samples: int = 200_000,
        **base: Any,
    ) -> None:
        super().__init__(**base)
        if not isinstance(model, MultiHeadSegmentationModel):
            raise ConfigError("DistillationTask needs a MultiHeadSegmentationModel student")
        self.model = model
        self.seg_head = _head_with_role(model, ("soft", "hard"), "class-map")
        self.unc_head = _head_with_role(model, ("uncertainty",), "uncertainty")
        self.criterion = loss if loss is not None else DistillationLoss()
        if getattr(self.criterion, "ignore_index", "absent") is None:
            self.criterion.ignore_index = ignore_index
        self.ignore_index = ignore_index
        if teacher is not None and not isinstance(teacher, EnsembleTeacher):
            teacher = EnsembleTeacher.from_checkpoints([str(p) for p in teacher])
        self._teacher = [teacher] if teacher is not None else []  # not a submodule: not saved
        classes = num_classes or model.classes
        self.val_metrics = SegmentationMetrics(classes, ignore_index)
        self.val_uncertainty = UncertaintyAgreement(max_samples=metric_samples)
        target = getattr(self.criterion, "uncertainty_target", "entropy")
        self.eval_target = target if target in UNCERTAINTY_BANDS else "std_winning"
        self.spec = {
            "seg_head": self.seg_head,
            "uncertainty_head": self.unc_head,
            "transform": getattr(self.criterion, "transform", "sqrt"),
            "activation": getattr(self.criterion, "activation", "none"),
            "log_eps": getattr(getattr(self.criterion, "uncertainty", None), "log_eps", 1e-3),
            "uncertainty_target": target,
        }
        if self.run_config is not None:
            self.run_config[CONFIG_KEY] = dict(self.spec)

    @property
    def teacher(self) -> EnsembleTeacher | None:
        return self._teacher[0] if self._teacher else None

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model(x)

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
        outputs = self.model.forward_heads(batch["image"])
        seg, unc = outputs[self.seg_head], outputs[self.unc_head]
        loss, parts = self.criterion(seg, unc, targets)
        return loss, parts, {"seg": seg, "unc": unc}, targets

    def _shared_step(self, batch: Mapping[str, Any], stage: str):
        image = batch["image"]
        loss, parts, out, targets = self.compute_loss(batch)
        seg, unc = out["seg"], out["unc"]
        bs, on_step, sync = image.shape[0], stage == "train", stage != "train"
        self.log(
            f"loss/{stage}",
            loss,
            prog_bar=True,
            batch_size=bs,
            on_step=on_step,
            on_epoch=True,
            sync_dist=sync,
        )
        for name, value in parts.items():
            self.log(
                f"loss/{stage}/{name}",
                value,
                batch_size=bs,
                on_step=False,
                on_epoch=True,
                sync_dist=sync,
            )
        return loss, seg, unc, targets

    def training_step(self, batch, batch_idx):
        loss, *_ = self._shared_step(batch, "train")
        return loss

    def validation_step(self, batch, batch_idx):
        _, seg, unc, targets = self._shared_step(batch, "val")
        self.val_metrics.update(seg.float().softmax(dim=1), targets["hard"])
        k = targets["soft"].shape[1]
        target = targets["uncertainty"][:, uncertainty_channels(self.eval_target, k)]
        valid = valid_soft_pixels(targets["soft"].float()).unsqueeze(1)
        self.val_uncertainty.update(student_uncertainty(seg, unc, self.spec), target, valid)

    def on_validation_epoch_end(self) -> None:
        values = self.val_metrics.compute()
        self.val_metrics.reset()
        for key, value in values.items():
            if value.ndim == 0:
                self.log(f"val/{key}", value, prog_bar=key == "mIoU")
        for k, iou in enumerate(values["IoU"]):
            self.log(f"val/IoU_{k}", torch.nan_to_num(iou, nan=0.0))
        agreement = self.val_uncertainty.compute()
        self.val_uncertainty.reset()
        for key, value in agreement.items():
            self.log(f"val/uncertainty/{key}", torch.nan_to_num(value.float(), nan=0.0))
