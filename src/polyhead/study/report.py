"""The dual-head study's report: per-seed records -> markdown tables and reliability figures.

A record is one (setting, row, seed) evaluation on the test scenes: ``metrics`` against the
truth (``truth``) and against the Dawid-Skene soft masks (``soft``), the reliability ``bins``
against the truth (`polyhead.study.metrics.evaluate`), ``epoch_s`` and ``temperature``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from polyhead.study.metrics import bins_to_curve

TRUTH_COLUMNS = ("miou", "accuracy", "ece", "nll", "brier", "boundary_f1")
SOFT_COLUMNS = (*TRUTH_COLUMNS, "kl")
HEADERS = {
    "miou": "mIoU ↑",
    "accuracy": "pixel acc ↑",
    "ece": "ECE ↓",
    "nll": "NLL ↓",
    "brier": "Brier ↓",
    "boundary_f1": "boundary F1 ↑",
    "kl": "KL ↓",
}


def group(records: Iterable[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Records by ``(setting, row)``, sorted by row label (the row number leads it)."""
    out: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        out[(r["setting"], r["row"])].append(r)
    return dict(sorted(out.items(), key=lambda item: item[0][1]))


def mean_std(values: Sequence[float]) -> str:
    """``mean ± std`` over seeds (sample std; ``± –`` for a single seed)."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return f"{v.mean():.4f} ± –"
    return f"{v.mean():.4f} ± {v.std(ddof=1):.4f}"


def mean_confidence(bins: Sequence[Sequence[float]]) -> float:
    """Mean top-class probability over the pixels of reliability ``bins`` ``[3, n_bins]``."""
    count, conf_sum = np.asarray(bins[0], np.float64), np.asarray(bins[1], np.float64)
    return float(conf_sum.sum() / max(count.sum(), 1))


def _table(rows: dict[str, list[dict[str, Any]]], reference: str, columns: Sequence[str]) -> str:
    head = ["method / head", "seeds", *(HEADERS[c] for c in columns)]
    if reference == "truth":
        head += ["mean conf", "T", "s / epoch"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, recs in rows.items():
        cells = [row, str(len(recs))]
        cells += [mean_std([r[reference][c] for r in recs]) for c in columns]
        if reference == "truth":
            cells.append(mean_std([mean_confidence(r["bins"]) for r in recs]))
            cells.append(f"{np.mean([r['temperature'] for r in recs]):.3f}")
            cells.append(f"{np.mean([r['epoch_s'] for r in recs]):.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(
    records: Sequence[dict[str, Any]], header: str, label_quality: dict[str, dict[str, float]]
) -> str:
    """The study's markdown: ``header``, then per setting the label quality and two tables."""
    parts = [header.rstrip(), ""]
    grouped = group(records)
    for setting in dict.fromkeys(r["setting"] for r in records):
        rows = {row: recs for (s, row), recs in grouped.items() if s == setting}
        parts.append(f"## Setting `{setting}`\n")
        quality = label_quality.get(setting, {})
        if quality:
            listed = ", ".join(f"{k} {v:.3f}" for k, v in quality.items())
            parts.append(f"Pixel accuracy of the labels against the truth (seed 0): {listed}.\n")
        parts.append("### Against the true classes (test scenes)\n")
        parts.append(_table(rows, "truth", TRUTH_COLUMNS) + "\n")
        parts.append("### Against the Dawid-Skene soft masks (test scenes)\n")
        parts.append(_table(rows, "soft", SOFT_COLUMNS) + "\n")
    return "\n".join(parts)


def reliability_figure(path: str | Path, records: Sequence[dict[str, Any]], title: str) -> Path:
    """One panel per row (bins summed over seeds): accuracy per confidence bin vs the truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from polyhead.io import save_figure

    rows = group(records)
    n = len(rows)
    cols = min(4, n)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 3.3 * nrows), squeeze=False)
    for ax, ((_, row), recs) in zip(axes.ravel(), rows.items(), strict=False):
        bins = np.sum([np.asarray(r["bins"]) for r in recs], axis=0)
        conf, acc, count, ece = bins_to_curve(bins)
        has = count > 0
        k = len(count)
        centers = (np.arange(k) + 0.5) / k
        ax.bar(centers[has], acc[has], width=1 / k, edgecolor="k", linewidth=0.5)
        ax.plot(conf[has], acc[has], "o", ms=3, color="C1")
        ax.plot([0, 1], [0, 1], "--", color="gray")
        ax.set(xlim=(0, 1), ylim=(0, 1), aspect="equal")
        ax.set_title(f"{row}\nECE {ece:.4f}", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.supxlabel("confidence", fontsize=9)
    fig.supylabel("accuracy (true classes)", fontsize=9)
    fig.tight_layout()
    try:
        return save_figure(fig, path, dpi=80)
    finally:
        plt.close(fig)
