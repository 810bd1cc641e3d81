"""Side-by-side figures: image, hard mask, soft mask and model predictions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from polyhead.display import class_colors, stretch_rgb
from polyhead.errors import DataError
from polyhead.io import save_figure

TITLE_PX = 28
LEGEND_PX = 48
DPI = 100


def figure_pixel_size(n_rows: int, n_cols: int, panel_px: int = 256) -> tuple[int, int]:
    """``(width, height)`` in pixels of the PNG written by `save_prediction_figure`."""
    return n_cols * panel_px, n_rows * (panel_px + TITLE_PX) + LEGEND_PX


def _as_rows(x: object, ndim: int, name: str) -> list[np.ndarray] | None:
    """Normalise one item, a list of items, or a batch array to a list of arrays."""
    if x is None:
        return None
    if isinstance(x, (list, tuple)):
        rows = [np.asarray(r) for r in x]
    else:
        arr = np.asarray(x)
        rows = [arr] if arr.ndim == ndim else list(arr) if arr.ndim == ndim + 1 else None
        if rows is None:
            raise DataError(f"{name} must have {ndim} or {ndim + 1} dims, got shape {arr.shape}")
    for r in rows:
        if r.ndim != ndim:
            raise DataError(f"each {name} must have {ndim} dims, got shape {r.shape}")
    return rows


def save_prediction_figure(
    path: str | Path,
    image: np.ndarray | Sequence[np.ndarray],
    hard_mask: np.ndarray | Sequence[np.ndarray] | None,
    soft_mask: np.ndarray | Sequence[np.ndarray] | None,
    predictions: Mapping[str, np.ndarray | Sequence[np.ndarray]],
    class_names: Sequence[str],
    rgb_bands: Sequence[int] = (2, 1, 0),
    panel_px: int = 256,
    row_titles: Sequence[str] | None = None,
) -> Path:
    """Write a PNG grid: one row per sample, columns image / hard / soft / predictions.

    ``image`` is ``[C, H, W]`` (or ``[N, C, H, W]`` / a list), masks and predictions are
    class maps ``[H, W]`` (or ``[N, H, W]``), ``soft_mask`` is ``[K, H, W]`` (or
    ``[N, K, H, W]``) and is drawn as the probability-weighted mix of class colours.
    ``hard_mask`` / ``soft_mask`` may be None to drop their column. The PNG size is
    `figure_pixel_size(n_rows, n_cols, panel_px)`.
    """
    images = _as_rows(image, 3, "image") or []
    hards = _as_rows(hard_mask, 2, "hard_mask")
    softs = _as_rows(soft_mask, 3, "soft_mask")
    preds = {k: _as_rows(v, 2, f"prediction {k!r}") for k, v in predictions.items()}
    n = len(images)
    for name, rows in [("hard_mask", hards), ("soft_mask", softs), *preds.items()]:
        if rows is not None and len(rows) != n:
            raise DataError(f"{name} has {len(rows)} rows but image has {n}")
    k = len(class_names)
    colors = class_colors(k)
    cmap = ListedColormap(colors)
    norm = BoundaryNorm(np.arange(-0.5, k + 0.5), k)

    columns: list[tuple[str, str, list[np.ndarray]]] = [("image", "rgb", images)]
    if hards is not None:
        columns.append(("hard mask", "labels", hards))
    if softs is not None:
        columns.append(("soft mask (mix)", "soft", softs))
    columns += [(name, "labels", rows) for name, rows in preds.items() if rows is not None]

    width, height = figure_pixel_size(n, len(columns), panel_px)
    font = float(np.clip(panel_px / 26, 5, 9))
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    FigureCanvasAgg(fig)  # Agg rendering without pyplot or a global backend switch
    for r in range(n):
        for c, (title, kind, rows) in enumerate(columns):
            top = height - r * (panel_px + TITLE_PX) - TITLE_PX
            ax = fig.add_axes(
                (
                    c * panel_px / width,
                    (top - panel_px) / height,
                    panel_px / width,
                    panel_px / height,
                )
            )
            ax.set_axis_off()
            data = rows[r]
            if kind == "rgb":
                ax.imshow(stretch_rgb(data, rgb_bands), interpolation="nearest")
            elif kind == "soft":
                if data.shape[0] != k:
                    raise DataError(f"soft_mask has {data.shape[0]} bands, expected {k}")
                mix = np.tensordot(np.clip(data, 0, None), colors, axes=(0, 0))
                ax.imshow(np.clip(mix, 0.0, 1.0), interpolation="nearest")
            else:
                ax.imshow(data, cmap=cmap, norm=norm, interpolation="nearest")
            label = title if row_titles is None else f"{row_titles[r]}: {title}"
            ax.set_title(label, fontsize=font, pad=3)
    handles = [
        Patch(facecolor=colors[i], edgecolor="k", label=str(name))
        for i, name in enumerate(class_names)
    ]
    fig.legend(
        handles=handles,
        loc="lower center",
        ncol=min(k, max(3, width // 100)),
        fontsize=font,
        frameon=False,
        bbox_to_anchor=(0.5, 0.0),
    )
    return save_figure(fig, path, dpi=DPI, format="png")
