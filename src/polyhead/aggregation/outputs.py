"""Output side of aggregation: the confusion document, its figures and the result record.

Every output is staged with `polyhead.io.Staging` (a temp folder beside ``out_dir``, moved
into place only when every step succeeded; see `polyhead.io.atomic` for the rules).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from polyhead.io import Staging, save_figure, write_json

SCORE_NAME = "mean per-class accuracy"
"""The one per-annotator score shown in the console, the figure and ``confusion.json``: the
mean of the confusion matrix's diagonal (every class weighs the same, whatever its prior)."""


def annotator_score(confusion: np.ndarray) -> float:
    """`SCORE_NAME` of one ``[K, K]`` confusion matrix (rows: true class)."""
    return float(np.trace(confusion) / confusion.shape[0])


def _rounded(array: np.ndarray, digits: int = 8) -> Any:
    return np.round(np.asarray(array, dtype=np.float64), digits).tolist()


def confusion_document(
    *,
    method: str,
    annotators: Sequence[str],
    confusion: np.ndarray,
    priors: np.ndarray,
    log_likelihood: Sequence[float],
    n_iter: int,
    converged: bool,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``confusion.json`` content (``confusion[a][true][given]``, rows sum to 1)."""
    doc: dict[str, Any] = {
        "method": method,
        "n_classes": int(confusion.shape[-1]),
        "annotators": list(annotators),
        "confusion_convention": "confusion[annotator][true_class][given_label]; rows sum to 1",
        "confusion": {a: _rounded(c) for a, c in zip(annotators, confusion, strict=True)},
        "mean_class_accuracy": {
            a: float(np.round(annotator_score(c), 8))
            for a, c in zip(annotators, confusion, strict=True)
        },
        "priors": _rounded(priors),
        "log_likelihood": [float(x) for x in log_likelihood],
        "n_iter": int(n_iter),
        "converged": bool(converged),
    }
    doc.update(extra or {})
    return doc


def plot_confusions(
    path: Path,
    confusion: np.ndarray,
    annotators: Sequence[str],
    class_names: Sequence[str] | None = None,
) -> None:
    """One heat-map panel per annotator (rows: true class, columns: given label), titled
    with its `SCORE_NAME`; ``class_names`` label the axes (default: class ids).

    Up to 8 annotators get full panels (axes, ticks, cell values when K <= 12); more
    are drawn as a mosaic in a single axes, which stays quick for dozens of them.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n, k = len(annotators), confusion.shape[-1]
    cols = min(n, 4 if n <= 8 else 6)
    rows = -(-n // cols)
    if n > 8:
        cell = k + 1
        mosaic = np.full((rows * cell + 1, cols * cell + 1), np.nan)
        fig = Figure(figsize=(1.0 + 0.25 * cols * cell, 1.0 + 0.28 * rows * cell))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        for i, (name, mat) in enumerate(zip(annotators, confusion, strict=True)):
            r0, c0 = 1 + (i // cols) * cell, 1 + (i % cols) * cell
            mosaic[r0 : r0 + k, c0 : c0 + k] = mat
            ax.text(c0 - 0.5, r0 - 0.7, f"{name} ({annotator_score(mat):.3f})", fontsize=6)
        ax.imshow(mosaic, vmin=0.0, vmax=1.0, cmap="Blues")
        ax.set_axis_off()
        ax.set_title(
            f"confusion per annotator (rows: true class, columns: given label); "
            f"in brackets: {SCORE_NAME}",
            fontsize=8,
        )
        save_figure(fig, path, dpi=100)
        return
    ticks = [str(c) for c in range(k)] if class_names is None else list(class_names)
    side = 1.2 + 0.45 * k + (0.08 * max(len(t) for t in ticks) if class_names else 0.0)
    fig = Figure(figsize=(side * cols, side * rows + 0.4))
    FigureCanvasAgg(fig)
    for i, (name, mat) in enumerate(zip(annotators, confusion, strict=True)):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(mat, vmin=0.0, vmax=1.0, cmap="Blues")
        ax.set_title(f"{name}\n{SCORE_NAME} {annotator_score(mat):.3f}", fontsize=9)
        ax.set_xlabel("given label", fontsize=8)
        ax.set_ylabel("true class", fontsize=8)
        ax.set_xticks(range(k), ticks, rotation=90 if max(map(len, ticks)) > 3 else 0)
        ax.set_yticks(range(k), ticks)
        ax.tick_params(labelsize=7)
        if k <= 12:
            for (r, c), v in np.ndenumerate(mat):
                color = "white" if v > 0.5 else "black"
                ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=6, color=color)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def plot_trace(path: Path, trace: Sequence[float]) -> None:
    """Mean log-likelihood per labelled pixel/item against the EM iteration."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5, 3.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(range(1, len(trace) + 1), list(trace), marker="o", markersize=3)
    ax.set_xlabel("EM iteration")
    ax.set_ylabel("mean log-likelihood")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def relative_to(path: Path, start: Path) -> str:
    """``path`` relative to ``start`` (POSIX separators), absolute when impossible."""
    try:
        return Path(os.path.relpath(Path(path).resolve(), start)).as_posix()
    except ValueError:
        return Path(path).resolve().as_posix()


@dataclass
class AggregationResult:
    """What `aggregate_masks` / `aggregate_labels` wrote and estimated."""

    out_dir: Path
    method: str
    annotators: list[str]
    confusion: np.ndarray
    """``[A, K, K]``, ``confusion[a, true, given]``."""
    priors: np.ndarray
    """``[K]`` (or ``[n_images, K]`` with per-image priors)."""
    log_likelihood: list[float]
    n_iter: int
    converged: bool
    n_patterns: int
    """Distinct label patterns (masks) or items (labels) the EM ran on."""
    n_labelled: int
    n_unlabelled: int
    confusion_json: Path
    outputs: list[Path] = field(default_factory=list)
    """Soft masks (masks) or the labels CSV (labels)."""
    hard_masks: list[Path] = field(default_factory=list)
    train_csv: Path | None = None
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0


def write_report(
    stage: Staging,
    method: str,
    annotators: list[str],
    confusion: np.ndarray,
    priors: np.ndarray,
    trace: list[float],
    n_iter: int,
    converged: bool,
    extra: dict[str, Any],
    class_names: Sequence[str] | None = None,
) -> None:
    """Write ``confusion.json``, the confusion-matrix PNG and the log-likelihood trace."""
    doc = confusion_document(
        method=method,
        annotators=annotators,
        confusion=confusion,
        priors=priors,
        log_likelihood=trace,
        n_iter=n_iter,
        converged=converged,
        extra=extra,
    )
    if class_names is not None:
        doc["class_names"] = list(class_names)
    write_json(stage.path("confusion.json"), doc)
    plot_confusions(stage.path("confusion_matrices.png"), confusion, annotators, class_names)
    if trace:
        plot_trace(stage.path("loglik.png"), trace)
