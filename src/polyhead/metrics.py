"""Segmentation metrics with sum-reducible state: IoU, pixel accuracy, calibration error.

One confusion matrix serves IoU and accuracy; calibration uses fixed confidence bins, so memory
stays constant however many pixels are validated (torchmetrics' CalibrationError keeps every
pixel's confidence) and DDP reduces by summing.
"""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics import Metric


class SegmentationMetrics(Metric):
    """mIoU, per-class IoU, pixel accuracy and expected calibration error (L1, equal-width bins).

    ``update(probs[B,K,H,W], target[B,H,W])`` with class probabilities (not logits).
    mIoU averages the IoU of classes present in target or prediction (the usual nan-mean).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(self, num_classes: int, ignore_index: int = 255, n_bins: int = 15) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.n_bins = n_bins
        k = num_classes
        self.add_state("confmat", torch.zeros(k, k, dtype=torch.long), dist_reduce_fx="sum")
        # one extra slot: confidence exactly 1.0 (torchmetrics bins the same way)
        self.add_state(
            "bin_count", torch.zeros(n_bins + 1, dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state(
            "bin_conf", torch.zeros(n_bins + 1, dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state(
            "bin_acc", torch.zeros(n_bins + 1, dtype=torch.float64), dist_reduce_fx="sum"
        )

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        confidence, prediction = probs.detach().float().max(dim=1)
        valid = target != self.ignore_index
        target, prediction, confidence = target[valid], prediction[valid], confidence[valid]
        if target.numel() and int(target.max()) >= self.num_classes:
            raise ValueError(
                f"target has class {int(target.max())} >= num_classes {self.num_classes}"
            )
        k = self.num_classes
        self.confmat += torch.bincount(target * k + prediction, minlength=k * k).view(k, k)
        edges = torch.linspace(0, 1, self.n_bins + 1, device=confidence.device)
        index = torch.bucketize(confidence, edges, right=True) - 1
        correct = (prediction == target).double()
        self.bin_count.scatter_add_(0, index, torch.ones_like(correct))
        self.bin_conf.scatter_add_(0, index, confidence.double())
        self.bin_acc.scatter_add_(0, index, correct)

    def compute(self) -> dict[str, torch.Tensor]:
        cm = self.confmat.double()
        tp = cm.diag()
        union = cm.sum(0) + cm.sum(1) - tp
        iou = tp / union  # nan where a class is absent from target and prediction
        total = self.bin_count.sum().clamp_min(1)
        ece = (self.bin_conf - self.bin_acc).abs().sum() / total
        return {
            "mIoU": torch.nanmean(iou).float(),
            "IoU": iou.float(),
            "pixel_accuracy": (tp.sum() / cm.sum().clamp_min(1)).float(),
            "ECE": ece.float(),
        }


class ImageLevelMetrics(nn.Module):
    """Metrics of an image-level head, by its role (torchmetrics underneath).

    ``classification``: ``accuracy``, ``F1`` (macro) and ``F1_{k}`` per class, from logits or
    probabilities ``[B, n]`` and class ids ``[B]``. ``multilabel``: ``F1`` (macro) and
    ``F1_{k}`` per label, from probabilities ``[B, n]`` and 0/1 ``[B, n]`` (threshold 0.5).
    ``regression``: ``MAE``, ``RMSE`` and ``R2`` (averaged over outputs) from values ``[B, n]``.
    """

    def __init__(self, role: str, n: int) -> None:
        super().__init__()
        from torchmetrics import classification as c
        from torchmetrics import regression as r

        self.role = role
        if role == "classification":
            parts = {
                "accuracy": c.MulticlassAccuracy(n, average="micro"),
                "F1": c.MulticlassF1Score(n, average="macro"),
                "F1_per": c.MulticlassF1Score(n, average="none"),
            }
        elif role == "multilabel":
            parts = {
                "F1": c.MultilabelF1Score(n, average="macro"),
                "F1_per": c.MultilabelF1Score(n, average="none"),
            }
        elif role == "regression":
            parts = {
                "MAE": r.MeanAbsoluteError(),
                "RMSE": r.MeanSquaredError(squared=False),
                "R2": r.R2Score(multioutput="uniform_average"),
            }
        else:
            raise ValueError(f"no image-level metrics for role {role!r}")
        from torchmetrics import MetricCollection

        self.parts = MetricCollection(parts)

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        output = output.detach().float()
        if self.role == "regression" and output.shape[1] == 1:
            output, target = output[:, 0], target.reshape(-1)
        if self.role == "multilabel":
            target = target.long()
        self.parts.update(output, target)

    def compute(self) -> dict[str, torch.Tensor]:
        values = self.parts.compute()
        out = {k: v for k, v in values.items() if k != "F1_per"}
        for k, v in enumerate(values.get("F1_per", [])):
            out[f"F1_{k}"] = v
        return out

    def reset(self) -> None:
        self.parts.reset()
