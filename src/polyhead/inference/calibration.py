"""Post-hoc temperature calibration of class-map heads, and reliability diagrams.

`calibrate_model` collects the validation logits of every class-map head (and of the
``average`` blend), fits one temperature each by minimising the NLL of the hard mask (LBFGS on
``log T``, ``ignore_index`` pixels excluded, a seeded subsample of at most ``max_pixels``) and
stores them in the model's ``temperature`` / ``average_temperature`` buffers, so every
prediction path (`Predictor`, `head_outputs`, export) applies them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from polyhead.errors import ConfigError
from polyhead.models.heads import TEMPERATURE
from polyhead.models.multihead import AVERAGE, AVERAGE_TEMPERATURE

#: pixels kept for the fit (a seeded subsample above that)
MAX_PIXELS = 2_000_000
#: confidence bins of the reliability diagram and ECE
N_BINS = 15


@dataclass
class Reliability:
    """Per-bin mean confidence, accuracy and pixel count (``N_BINS`` bins), and the ECE."""

    confidence: torch.Tensor
    accuracy: torch.Tensor
    count: torch.Tensor
    ece: float


@dataclass
class HeadCalibration:
    """One head's (or ``average``'s) fitted temperature, NLL and reliability before/after."""

    head: str
    temperature: float
    nll_before: float
    nll_after: float
    before: Reliability
    after: Reliability


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> float:
    """The temperature ``T`` minimising ``NLL(softmax(logits / T), labels)`` (LBFGS on
    ``log T``); ``logits`` ``[N, K]``, ``labels`` ``[N]``."""
    logits = logits.float()
    log_t = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS(
        [log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-9
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``."""
    return float(F.cross_entropy(logits.float() / temperature, labels))


def reliability(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = N_BINS) -> Reliability:
    """Confidence vs accuracy in ``n_bins`` equal bins of the top probability; ECE is the
    count-weighted mean gap (bins as `polyhead.metrics.SegmentationMetrics` counts them)."""
    confidence, prediction = probs.float().max(dim=1)
    edges = torch.linspace(0, 1, n_bins + 1)
    index = (torch.bucketize(confidence, edges, right=True) - 1).clamp(0, n_bins - 1)
    correct = (prediction == labels).double()
    count = torch.zeros(n_bins, dtype=torch.float64).scatter_add_(
        0, index, torch.ones_like(correct)
    )
    conf = torch.zeros(n_bins, dtype=torch.float64).scatter_add_(0, index, confidence.double())
    acc = torch.zeros(n_bins, dtype=torch.float64).scatter_add_(0, index, correct)
    ece = float((conf - acc).abs().sum() / count.sum().clamp_min(1))
    safe = count.clamp_min(1)
    return Reliability(conf / safe, acc / safe, count, ece)


@torch.no_grad()  # not inference_mode: the fit needs autograd on these logits
def collect_logits(
    model: Any,
    dataset: Dataset,
    selections: Sequence[str],
    ignore_index: int = 255,
    max_pixels: int = MAX_PIXELS,
    seed: int = 0,
    batch_size: int = 8,
    device: str = "cpu",
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``({selection: logits [N, K]}, labels [N])`` over the valid pixels of ``dataset``
    (grid-mode items with ``targets["hard"]``), a seeded subsample of at most ``max_pixels``."""
    generator = torch.Generator().manual_seed(seed)
    needed = list(dict.fromkeys(n for s in selections for n in model.heads_for(s)))
    first = dataset[0]["targets"]["hard"]
    expected = len(dataset) * first.numel()  # an upper bound: padding is ignore_index
    keep = min(1.0, 1.5 * max_pixels / max(expected, 1))
    logits: dict[str, list[torch.Tensor]] = {s: [] for s in selections}
    labels: list[torch.Tensor] = []
    model = model.to(device).eval()
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        target = batch["targets"]["hard"]
        valid = target != ignore_index
        if keep < 1.0:
            valid &= torch.rand(target.shape, generator=generator) < keep
        if not valid.any():
            continue
        raw = model.forward_heads(batch["image"].to(device), needed)
        for s in selections:
            pixels = model.class_logits(raw, s).float().cpu().permute(0, 2, 3, 1)
            logits[s].append(pixels[valid])
        labels.append(target[valid])
    if not labels:
        raise ConfigError("the validation data has no labelled pixel (all ignore_index)")
    out = {s: torch.cat(v) for s, v in logits.items()}
    all_labels = torch.cat(labels)
    if len(all_labels) > max_pixels:
        pick = torch.randperm(len(all_labels), generator=generator)[:max_pixels]
        out, all_labels = {s: v[pick] for s, v in out.items()}, all_labels[pick]
    return out, all_labels


def set_temperature(model: Any, selection: str, temperature: float) -> None:
    """Store ``temperature`` in the model: a head's ``temperature`` buffer, or the model's
    ``average_temperature`` for ``average``."""
    owner, name = (
        (model, AVERAGE_TEMPERATURE)
        if selection == AVERAGE
        else (
            model.heads[selection],
            TEMPERATURE,
        )
    )
    buffer = getattr(owner, name, None)
    if not isinstance(buffer, torch.Tensor):
        raise ConfigError(f"{selection!r} has no {name} buffer: it cannot be calibrated")
    buffer.fill_(temperature)


def calibration_selections(model: Any) -> list[str]:
    """The model's class-map heads, and ``average`` when there are several."""
    heads = list(model.class_map_heads())
    return heads + [AVERAGE] if len(heads) > 1 else heads


def calibrate_model(
    model: Any,
    dataset: Dataset,
    ignore_index: int = 255,
    max_pixels: int = MAX_PIXELS,
    seed: int = 0,
    batch_size: int = 8,
    device: str = "cpu",
) -> list[HeadCalibration]:
    """Fit and store one temperature per class-map head and for ``average`` (see module)."""
    selections = calibration_selections(model)
    logits, labels = collect_logits(
        model, dataset, selections, ignore_index, max_pixels, seed, batch_size, device
    )
    results = []
    for s in selections:
        z = logits[s]
        t = fit_temperature(z, labels)
        set_temperature(model, s, t)
        results.append(
            HeadCalibration(
                head=s,
                temperature=t,
                nll_before=nll(z, labels),
                nll_after=nll(z, labels, t),
                before=reliability(torch.softmax(z, 1), labels),
                after=reliability(torch.softmax(z / t, 1), labels),
            )
        )
    return results


def save_reliability_figure(path: str | Path, result: HeadCalibration) -> Path:
    """A before/after reliability diagram of one head (confidence vs accuracy, ECE in the
    titles), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from polyhead.io import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(9, 4.5), sharey=True)
    centers = (np.arange(N_BINS) + 0.5) / N_BINS
    panels = (("before", 1.0, result.before), ("after", result.temperature, result.after))
    for ax, (when, t, rel) in zip(axes, panels, strict=True):
        has, acc, conf = rel.count.numpy() > 0, rel.accuracy.numpy(), rel.confidence.numpy()
        ax.bar(centers[has], acc[has], width=1 / N_BINS, edgecolor="k", label="accuracy")
        ax.plot(conf[has], acc[has], "o", color="C1", label="(conf, acc)")
        ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", aspect="equal")
        ax.set_title(f"{when} (T = {t:.3f}): ECE {rel.ece:.4f}")
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="upper left", fontsize="small")
    fig.suptitle(f"reliability of head {result.head} ({N_BINS} bins)")
    fig.tight_layout()
    try:
        return save_figure(fig, path, dpi=100)
    finally:
        plt.close(fig)
