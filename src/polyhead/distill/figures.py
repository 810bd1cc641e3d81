"""Figure: image, student class map, student uncertainty and ensemble uncertainty side by side."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure

from polyhead.display import class_colors, stretch_rgb
from polyhead.errors import DataError
from polyhead.io import save_figure


def _as_map(name: str, value: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    arr = np.asarray(value, np.float64)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.shape != shape:
        raise DataError(f"{name} must be [H, W] = {list(shape)}, got shape {list(arr.shape)}")
    return arr


def save_uncertainty_figure(
    path: str | Path,
    image: np.ndarray,
    prediction: np.ndarray,
    student_unc: np.ndarray,
    ensemble_unc: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    rgb_bands: Sequence[int] = (2, 1, 0),
    title: str | None = None,
) -> Path:
    """Write a PNG with 3 or 4 panels: image ``[C, H, W]`` (percentile-stretched RGB),
    class map ``[H, W]``, the student's uncertainty ``[H, W]`` and, when given, the
    ensemble's; both uncertainty panels share one colour scale (0 to the larger 99.5th
    percentile)."""
    image = np.asarray(image)
    if image.ndim != 3:
        raise DataError(f"image must be [C, H, W], got shape {list(image.shape)}")
    shape = image.shape[1:]
    prediction = np.asarray(prediction).astype(np.int64)
    if prediction.shape != shape:
        raise DataError(f"prediction must be [H, W] = {list(shape)}, got {list(prediction.shape)}")
    maps = {"student uncertainty": _as_map("student_unc", student_unc, shape)}
    if ensemble_unc is not None:
        maps["ensemble uncertainty"] = _as_map("ensemble_unc", ensemble_unc, shape)
    vmax = max(float(np.percentile(m, 99.5)) for m in maps.values()) or 1e-6
    n_classes = max(int(prediction.max()) + 1, len(class_names or ()))
    cmap = ListedColormap(class_colors(n_classes))
    norm = BoundaryNorm(np.arange(n_classes + 1) - 0.5, n_classes)

    n = 2 + len(maps)
    fig = Figure(figsize=(3.2 * n, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n)
    bands = rgb_bands if image.shape[0] > max(rgb_bands) else (0, 0, 0)
    axes[0].imshow(stretch_rgb(image, bands))
    axes[0].set_title("image")
    axes[1].imshow(prediction, cmap=cmap, norm=norm, interpolation="nearest")
    axes[1].set_title("student prediction")
    im = None
    for ax, (name, arr) in zip(axes[2:], maps.items(), strict=True):
        im = ax.imshow(arr, cmap="magma", vmin=0.0, vmax=vmax, interpolation="nearest")
        ax.set_title(name)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if im is not None:
        fig.colorbar(im, ax=list(axes[2:]), fraction=0.046, pad=0.02)
    if class_names:
        from matplotlib.patches import Patch

        handles = [Patch(color=cmap(i), label=str(c)) for i, c in enumerate(class_names)]
        fig.legend(
            handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False
        )
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


#: panels of `save_agreement_curves`: (title, numerator key, denominator key or None)
_CURVES = (
    ("Pearson (student vs ensemble map)", "val/uncertainty/pearson", None),
    ("mean predicted / mean target", "val/uncertainty/mean_pred", "val/uncertainty/mean_target"),
    ("spatial std predicted / target", "val/uncertainty/std_pred", "val/uncertainty/std_target"),
)


def read_epoch_metrics(metrics_csv: str | Path) -> dict[str, np.ndarray]:
    """Per-epoch validation columns of a Lightning ``CSVLogger`` ``metrics.csv`` (rows without
    the column dropped), with the matching ``epoch`` values under ``"<key>@epoch"``."""
    import csv

    with open(metrics_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise DataError(f"{metrics_csv}: no rows")
    out: dict[str, np.ndarray] = {}
    for key in rows[0]:
        kept = [(float(r["epoch"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
        if kept and key != "epoch":
            epochs, values = zip(*kept, strict=True)
            out[key], out[f"{key}@epoch"] = np.array(values), np.array(epochs)
    return out


def save_agreement_curves(
    path: str | Path, runs: dict[str, str | Path], title: str | None = None
) -> Path:
    """PNG of the validation uncertainty agreement per epoch for several students: Pearson,
    mean and spatial spread of the predicted map relative to the target's (a head collapsing
    to a constant shows as the spread ratio falling to 0). ``runs`` maps a label to a
    ``metrics.csv`` written by `polyhead.tasks.distillation.DistillationTask`."""
    fig = Figure(figsize=(13, 3.8), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(_CURVES))
    for label, metrics_csv in runs.items():
        m = read_epoch_metrics(metrics_csv)
        for ax, (_, num, den) in zip(axes, _CURVES, strict=True):
            if num not in m or (den is not None and den not in m):
                raise DataError(f"{metrics_csv}: no column {num if num not in m else den!r}")
            y = m[num] / m[den] if den is not None else m[num]
            ax.plot(m[f"{num}@epoch"] + 1, y, marker="o", ms=3, label=label)
    for ax, (name, _, den) in zip(axes, _CURVES, strict=True):
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if den is not None:
            ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)
