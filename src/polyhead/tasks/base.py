"""Shared Lightning plumbing: optimizer/scheduler from partials, config kept in checkpoints."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
import torch

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


def default_optimizer(params) -> torch.optim.Optimizer:
    """AdamW, lr 3e-4, weight decay 1e-4: the default when a config names no optimizer."""
    return torch.optim.AdamW(params, lr=3e-4, weight_decay=1e-4)


class BaseTask(pl.LightningModule):
    """A LightningModule that gets built objects (never a config) plus optimizer factories.

    Args:
        optimizer: ``params -> Optimizer`` (e.g. a Hydra ``_partial_: true`` target).
        scheduler: ``optimizer -> LR scheduler``, or None.
        scheduler_interval: "epoch" or "step".
        scheduler_monitor: metric for schedulers such as ReduceLROnPlateau.
        config: the resolved run configuration, stored in every checkpoint under
            ``polyhead_config`` so ``polyhead predict CHECKPOINT`` can rebuild the model.
    """

    def __init__(
        self,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "epoch",
        scheduler_monitor: str = "loss/val",
        config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.optimizer_factory = optimizer or default_optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.scheduler_monitor = scheduler_monitor
        self.run_config = dict(config) if config is not None else None

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = {
            "scheduler": self.scheduler_factory(optimizer),
            "interval": self.scheduler_interval,
            "monitor": self.scheduler_monitor,
        }
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.run_config is not None:
            checkpoint["polyhead_config"] = self.run_config

    def epoch_progress(self, batch_idx: int) -> float:
        """Epochs done as a float (for warm-ups), e.g. 1.5 halfway through the second epoch."""
        n = self.trainer.num_training_batches if self._trainer is not None else float("inf")
        if not n or n == float("inf"):
            return float(self.current_epoch)
        return self.current_epoch + batch_idx / n


def log_losses(
    task: pl.LightningModule, stage: str, loss: torch.Tensor, parts: Mapping[str, Any], bs: int
) -> None:
    """Log ``loss/{stage}`` (per step when training) and each part as ``loss/{stage}/{part}``."""
    sync = stage != "train"
    task.log(
        f"loss/{stage}",
        loss,
        prog_bar=True,
        batch_size=bs,
        on_step=not sync,
        on_epoch=True,
        sync_dist=sync,
    )
    for name, value in parts.items():
        task.log(
            f"loss/{stage}/{name}",
            value,
            batch_size=bs,
            on_step=False,
            on_epoch=True,
            sync_dist=sync,
        )


def log_segmentation_metrics(
    task: pl.LightningModule, metric: Any, prefix: str, also_as: str | None = None
) -> None:
    """Compute, log as ``{prefix}/{name}`` (and ``{also_as}/{name}``) and reset a
    `SegmentationMetrics`; per-class IoU as ``{prefix}/IoU_{k}`` (NaN logged as 0)."""
    values = metric.compute()
    metric.reset()
    for key, value in values.items():
        if value.ndim == 0:
            task.log(f"{prefix}/{key}", value, prog_bar=also_as is None and key == "mIoU")
            if also_as is not None:
                task.log(f"{also_as}/{key}", value, prog_bar=key == "mIoU")
    for k, iou in enumerate(values["IoU"]):
        task.log(f"{prefix}/IoU_{k}", torch.nan_to_num(iou, nan=0.0))


def log_balance(task: pl.LightningModule, values: Mapping[str, float]) -> None:
    """Log a loss balancer's values (log-variances, DWA weights) per step as
    ``balance/{term}``."""
    for term, value in values.items():
        task.log(f"balance/{term}", value, on_step=True, on_epoch=False)


def log_image_metrics(task: pl.LightningModule, metric: Any, prefix: str) -> None:
    """Compute, log as ``{prefix}/{name}`` and reset an image-level head's metrics (nothing
    when no validation sample had its target)."""
    try:
        values = metric.compute()
    except (ValueError, RuntimeError):  # no sample (or one, for R2) had this head's target
        values = {}
    finally:
        metric.reset()
    for key, value in values.items():
        task.log(f"{prefix}/{key}", torch.nan_to_num(value.float(), nan=0.0))
