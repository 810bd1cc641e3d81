"""Evaluate a trained model's heads on a grid-mode dataset."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from polyhead.losses.soft_label import valid_soft_pixels
from polyhead.metrics import SegmentationMetrics
from polyhead.models.multihead import AVERAGE, MultiHeadSegmentationModel


def evaluate_heads(
    model: nn.Module,
    dataset: Dataset,
    num_classes: int,
    heads: Sequence[str] | None = None,
    ignore_index: int = 255,
    batch_size: int = 8,
    device: str = "cpu",
) -> dict[str, dict[str, torch.Tensor]]:
    """Metrics (mIoU, IoU, pixel_accuracy, ECE) of each head, keyed by head name.

    When the dataset has soft masks, ``soft_KL`` is added: the mean per-pixel
    KL(soft mask || prediction), i.e. how well a head reproduces the annotators' spread.

    For a multi-head model ``heads`` defaults to its class-map heads plus ``average``; a
    single-output model is reported under ``"output"``. Encoder features are computed once per
    batch and shared by every head.
    """
    multi = isinstance(model, MultiHeadSegmentationModel)
    if heads is None:
        heads = model.averaged_heads() + [AVERAGE] if multi else ["output"]
    metrics = {h: SegmentationMetrics(num_classes, ignore_index).to(device) for h in heads}
    kl_sum = dict.fromkeys(heads, 0.0)
    kl_pixels = 0
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    model = model.to(device).eval()
    with torch.inference_mode():
        for batch in loader:
            image = batch["image"].to(device)
            target = batch["targets"]["hard"].to(device)
            soft = batch["targets"].get("soft")
            valid = None if soft is None else valid_soft_pixels(soft.to(device))
            if valid is not None:
                kl_pixels += int(valid.sum())
            outputs = model.forward_heads(image) if multi else {"output": model(image)}
            for head, metric in metrics.items():
                logits = model.select(outputs, head) if multi else outputs[head]
                metric.update(logits.float().softmax(1), target)
                if valid is not None:
                    p = soft.to(device).float()
                    kl = (torch.special.xlogy(p, p) - p * logits.float().log_softmax(1)).sum(1)
                    kl_sum[head] += float(kl[valid].sum())
    results = {head: metric.compute() for head, metric in metrics.items()}
    if kl_pixels:
        for head in heads:
            results[head]["soft_KL"] = torch.tensor(kl_sum[head] / kl_pixels)
    return results
