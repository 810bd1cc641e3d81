"""Evaluate a trained model's heads on a grid-mode dataset."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from polyhead.inference.predictor import PROBABILITIES, Predictor
from polyhead.losses.soft_label import valid_soft_pixels
from polyhead.metrics import SegmentationMetrics
from polyhead.models.multihead import AVERAGE


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

    ``heads`` defaults to the model's class-map heads, plus ``average`` when there are
    several. Each head's probabilities come from its `Predictor`; the encoder runs once per
    batch for all of them.
    """
    if heads is None:
        heads = model.class_map_heads()
        heads += [AVERAGE] if len(heads) > 1 else []
    predictors = {h: Predictor(model, head=h) for h in heads}
    needed = list(dict.fromkeys(n for p in predictors.values() for n in p.needed))
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
            raw = model.forward_heads(image, needed)
            for head, metric in metrics.items():
                probs = predictors[head].maps(raw)[PROBABILITIES]
                metric.update(probs, target)
                if valid is not None:
                    p = soft.to(device).float()
                    log_q = probs.clamp_min(torch.finfo(torch.float32).tiny).log()
                    kl = (torch.special.xlogy(p, p) - p * log_q).sum(1)
                    kl_sum[head] += float(kl[valid].sum())
    results = {head: metric.compute() for head, metric in metrics.items()}
    if kl_pixels:
        for head in heads:
            results[head]["soft_KL"] = torch.tensor(kl_sum[head] / kl_pixels)
    return results
