"""Segmentation training: every head of a polyhead model on its own target."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from polyhead.errors import ConfigError
from polyhead.losses import MultiHeadLoss
from polyhead.losses.balancing import LossBalancer
from polyhead.metrics import ImageLevelMetrics, SegmentationMetrics
from polyhead.models.multihead import AVERAGE, MultiHeadSegmentationModel
from polyhead.models.single import as_polyhead_model
from polyhead.tasks.base import (
    BaseTask,
    log_balance,
    log_image_metrics,
    log_losses,
    log_segmentation_metrics,
)


class SegmentationTask(BaseTask):
    """Train a polyhead segmentation model: every head on its own target, plus consistency.

    Each head learns from the batch target its role names (``hard`` masks, ``soft`` masks,
    ``uncertainty`` maps) with its own loss (`polyhead.losses.MultiHeadLoss`); each part is
    logged as ``loss/{stage}/{head}``. Validation logs ``val/{head}/mIoU|pixel_accuracy|ECE|
    IoU_{k}`` for each class-map head, for ``average`` when there are several, and
    ``val/mIoU`` etc. for the model's ``inference_head``; image-level heads log
    ``val/{head}/accuracy|F1|F1_{k}`` or ``MAE|RMSE|R2`` (`polyhead.metrics.ImageLevelMetrics`),
    on the samples that have their target (``batch["present"]``).

    Args:
        model: a polyhead segmentation model (`MultiHeadSegmentationModel`,
            `SegmentationModel`, `UPerNetDualHead`); any other network returning class
            logits is trained as a one-head model (`polyhead.models.NetworkModel`).
        loss: loss of the heads that learn hard masks (default: the head's, cross-entropy);
            its ``ignore_index`` is set to the data's when left at its default.
        soft_loss: loss of the heads that learn soft masks (default `SoftLabelLoss`).
        losses: further losses by head name or target key (``uncertainty``).
        consistency, consistency_weight, consistency_warmup_epochs, head_weights:
            see :class:`polyhead.losses.MultiHeadLoss`.
        num_classes: classes for metrics (default: the model's).
        ignore_index: hard-mask value for unlabelled pixels.
        balancing: how the loss terms are weighed (`polyhead.losses.balancing`: a
            `LossBalancer` or ``fixed``/``uncertainty``/``dwa``; default fixed weights). Its
            values are logged each training step as ``balance/{term}``; learnable ones are
            parameters of this task (optimised, saved in checkpoints).
    """

    def __init__(
        self,
        model: MultiHeadSegmentationModel,
        loss: nn.Module | None = None,
        soft_loss: nn.Module | None = None,
        consistency: nn.Module | None = None,
        consistency_weight: float = 0.1,
        consistency_warmup_epochs: float = 1.0,
        head_weights: Mapping[str, float] | None = None,
        num_classes: int | None = None,
        ignore_index: int = 255,
        losses: Mapping[str, nn.Module] | None = None,
        balancing: LossBalancer | str | None = None,
        **base: Any,
    ) -> None:
        super().__init__(**base)
        self.model = model = as_polyhead_model(model)
        self.ignore_index = ignore_index
        self.criterion = MultiHeadLoss(
            dict(model.heads.items()),
            losses=losses,
            hard_loss=loss,
            soft_loss=soft_loss,
            weights=head_weights,
            consistency=consistency,
            consistency_weight=consistency_weight,
            consistency_warmup_epochs=consistency_warmup_epochs,
            ignore_index=ignore_index,
            balancing=balancing,
        )
        self.metric_heads = model.class_map_heads()
        if len(self.metric_heads) > 1:
            self.metric_heads.append(AVERAGE)
        classes = num_classes or model.classes
        if classes is None:
            raise ConfigError("SegmentationTask: pass num_classes for a model without .classes")
        self.val_metrics = nn.ModuleDict(
            {h: SegmentationMetrics(classes, ignore_index) for h in self.metric_heads}
        )
        image_heads = model.image_level_heads() if hasattr(model, "image_level_heads") else []
        self.image_metrics = nn.ModuleDict(
            {h: ImageLevelMetrics(model.heads[h].role, model.heads[h].classes) for h in image_heads}
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.forward_heads(x)

    def _shared_step(self, batch: Mapping[str, Any], stage: str, batch_idx: int):
        image, targets = batch["image"], batch["targets"]
        outputs = self.model.forward_heads(image)
        epoch = self.epoch_progress(batch_idx) if stage == "train" else self.current_epoch
        loss, parts = self.criterion(
            outputs, targets, epoch=epoch, strict=stage == "train", present=batch.get("present")
        )
        log_losses(self, stage, loss, parts, image.shape[0])
        return loss, outputs

    def training_step(self, batch, batch_idx):
        loss, _ = self._shared_step(batch, "train", batch_idx)
        log_balance(self, self.criterion.balancer.logged())
        return loss

    def on_train_epoch_end(self) -> None:
        self.criterion.balancer.epoch_end()

    def validation_step(self, batch, batch_idx):
        _, outputs = self._shared_step(batch, "val", batch_idx)
        hard = batch["targets"]["hard"]
        for head in self.metric_heads:
            self.val_metrics[head].update(self.model.class_probabilities(outputs, head), hard)
        present = batch.get("present") or {}
        for head, metric in self.image_metrics.items():
            target = batch["targets"].get(head)
            if target is None:
                continue
            keep = present.get(head)
            value = self.model.heads[head].activate(outputs[head])
            if keep is not None:
                value, target = value[keep], target[keep]
            if len(target):
                metric.update(value, target)

    def on_validation_epoch_end(self) -> None:
        selected = self.model.inference_head
        for head, metric in self.val_metrics.items():
            log_segmentation_metrics(
                self, metric, f"val/{head}", also_as="val" if head == selected else None
            )
        for head, metric in self.image_metrics.items():
            log_image_metrics(self, metric, f"val/{head}")
