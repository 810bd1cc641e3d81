"""Segmentation training: single-head models and multi-head models (hard/soft heads)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from polyhead.losses import MultiHeadLoss, ensure_ignore_index
from polyhead.metrics import SegmentationMetrics
from polyhead.models.multihead import AVERAGE, MultiHeadSegmentationModel
from polyhead.tasks.base import BaseTask

SINGLE = "output"


class SegmentationTask(BaseTask):
    """Train a segmentation model; multi-head models are detected and their heads routed.

    A :class:`MultiHeadSegmentationModel` (e.g. ``UPerNetDualHead``) gets one loss per head:
    hard heads ``loss`` against ``targets["hard"]``, soft heads ``soft_loss`` against
    ``targets["soft"]``, plus the consistency term; each part is logged as
    ``loss/{stage}/{head}``. Any other model is trained with ``loss`` on its single output.
    Validation logs ``val/{head}/mIoU|pixel_accuracy|ECE|IoU_{k}`` for each class-map head,
    for ``average`` when there are several, and ``val/mIoU`` etc. for ``inference_head``.

    Args:
        model: the network.
        loss: hard-mask loss (default cross-entropy); its ``ignore_index`` is set to the data's
            when left at its default.
        soft_loss, consistency, consistency_weight, consistency_warmup_epochs, head_weights:
            see :class:`polyhead.losses.MultiHeadLoss`.
        num_classes: classes for metrics (default: the model's).
        ignore_index: hard-mask value for unlabelled pixels.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: nn.Module | None = None,
        soft_loss: nn.Module | None = None,
        consistency: nn.Module | None = None,
        consistency_weight: float = 0.1,
        consistency_warmup_epochs: float = 1.0,
        head_weights: Mapping[str, float] | None = None,
        num_classes: int | None = None,
        ignore_index: int = 255,
        **base: Any,
    ) -> None:
        super().__init__(**base)
        self.model = model
        self.ignore_index = ignore_index
        self.multihead = isinstance(model, MultiHeadSegmentationModel)
        loss = loss if loss is not None else nn.CrossEntropyLoss()
        if self.multihead:
            self.criterion = MultiHeadLoss(
                model.head_roles,
                hard_loss=loss,
                soft_loss=soft_loss,
                weights=head_weights,
                consistency=consistency,
                consistency_weight=consistency_weight,
                consistency_warmup_epochs=consistency_warmup_epochs,
                ignore_index=ignore_index,
            )
            self.metric_heads = model.averaged_heads()
            if len(self.metric_heads) > 1:
                self.metric_heads.append(AVERAGE)
        else:
            self.criterion = ensure_ignore_index(loss, ignore_index)
            self.metric_heads = [SINGLE]
        classes = num_classes or getattr(model, "classes", None)
        if classes is None:
            raise ValueError("SegmentationTask: pass num_classes for a model without .classes")
        self.val_metrics = nn.ModuleDict(
            {h: SegmentationMetrics(classes, ignore_index) for h in self.metric_heads}
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _shared_step(self, batch: Mapping[str, Any], stage: str, batch_idx: int):
        image, targets = batch["image"], batch["targets"]
        if self.multihead:
            outputs = self.model.forward_heads(image)
            epoch = self.epoch_progress(batch_idx) if stage == "train" else self.current_epoch
            loss, parts = self.criterion(outputs, targets, epoch=epoch, strict=stage == "train")
        else:
            outputs = {SINGLE: self.model(image)}
            loss, parts = self.criterion(outputs[SINGLE], targets["hard"]), {}
        bs = image.shape[0]
        on_step = stage == "train"
        self.log(
            f"loss/{stage}",
            loss,
            prog_bar=True,
            batch_size=bs,
            on_step=on_step,
            on_epoch=True,
            sync_dist=stage != "train",
        )
        for name, value in parts.items():
            self.log(
                f"loss/{stage}/{name}",
                value,
                batch_size=bs,
                on_step=False,
                on_epoch=True,
                sync_dist=stage != "train",
            )
        return loss, outputs

    def training_step(self, batch, batch_idx):
        loss, _ = self._shared_step(batch, "train", batch_idx)
        return loss

    def validation_step(self, batch, batch_idx):
        _, outputs = self._shared_step(batch, "val", batch_idx)
        hard = batch["targets"]["hard"]
        for head in self.metric_heads:
            logits = self.model.select(outputs, head) if self.multihead else outputs[head]
            self.val_metrics[head].update(logits.float().softmax(dim=1), hard)

    def on_validation_epoch_end(self) -> None:
        selected = self.model.inference_head if self.multihead else SINGLE
        for head, metric in self.val_metrics.items():
            values = metric.compute()
            metric.reset()
            scalars = {k: v for k, v in values.items() if v.ndim == 0}
            for key, value in scalars.items():
                self.log(f"val/{head}/{key}", value)
                if head == selected:
                    self.log(f"val/{key}", value, prog_bar=key == "mIoU")
            for k, iou in enumerate(values["IoU"]):
                self.log(f"val/{head}/IoU_{k}", torch.nan_to_num(iou, nan=0.0))
