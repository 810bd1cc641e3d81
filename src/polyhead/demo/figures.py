"""Side-by-side figures: image, true classes, hard and soft masks, and model predictions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from polyhead.classes import ClassTable
from polyhead.display import class_colors, stretch_rgb
from polyhead.errors import DataError
from polyhead.io import save_figure

TITLE_PX = 36
LEGEND_PX = 48
ROW_LABEL_PX = 22
CAPTION_LINE_PX = 14
DPI = 100
#: the soft mask's rendering, in words (the figure's caption unless another is given)
SOFT_CAPTION = (
    "Soft mask: each pixel mixes the class colours in proportion to its class probabilities; "
    "a pure colour is a sure pixel, a blended (muddy) one is where the annotators disagree."
)
#: column titles in plain words
COLUMN_TITLES = {
    "image": "image (RGB stretch)",
    "truth": "true classes",
    "hard": "hard mask\n(majority vote)",
    "soft": "soft mask (colour mix)",
}


def figure_pixel_size(
    n_rows: int,
    n_cols: int,
    panel_px: int = 256,
    row_labels: bool = False,
    caption_lines: int = 0,
) -> tuple[int, int]:
    """``(width, height)`` in pixels of the PNG written by `save_prediction_figure`."""
    width = n_cols * panel_px + (ROW_LABEL_PX if row_labels else 0)
    return width, n_rows * (panel_px + TITLE_PX) + LEGEND_PX + caption_lines * CAPTION_LINE_PX


def caption_lines(caption: str | None, width_px: int, font: float) -> list[str]:
    """``caption`` wrapped to the figure width (about 0.55 font size per character)."""
    import textwrap

    if not caption:
        return []
    return textwrap.wrap(caption, max(20, int(width_px / (0.62 * font * DPI / 72))))


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
    *,
    truth: np.ndarray | Sequence[np.ndarray] | None = None,
    classes: ClassTable | None = None,
    column_titles: Mapping[str, str] | None = None,
    caption: str | None = None,
) -> Path:
    """Write a PNG grid: one row per sample, columns image / truth / hard / soft / predictions.

    ``image`` is ``[C, H, W]`` (or ``[N, C, H, W]`` / a list), ``truth``, masks and
    predictions are class maps ``[H, W]`` (or ``[N, H, W]``), ``soft_mask`` is ``[K, H, W]``
    (or ``[N, K, H, W]``) and is drawn as the probability-weighted mix of class colours.
    ``truth`` / ``hard_mask`` / ``soft_mask`` may be None to drop their column. Colours and
    legend names come from ``classes`` (default: the default palette with ``class_names``).
    ``row_titles`` label each row at the left; ``column_titles`` replace `COLUMN_TITLES`;
    ``caption`` (default `SOFT_CAPTION` when there is a soft mask) is printed under the
    legend. The PNG size is `figure_pixel_size` of the rows, columns, labels and caption.
    """
    images = _as_rows(image, 3, "image") or []
    truths = _as_rows(truth, 2, "truth")
    hards = _as_rows(hard_mask, 2, "hard_mask")
    softs = _as_rows(soft_mask, 3, "soft_mask")
    preds = {k: _as_rows(v, 2, f"prediction {k!r}") for k, v in predictions.items()}
    n = len(images)
    for name, rows in [("truth", truths), ("hard_mask", hards), ("soft_mask", softs),
                       *preds.items()]:  # fmt: skip
        if rows is not None and len(rows) != n:
            raise DataError(f"{name} has {len(rows)} rows but image has {n}")
    if row_titles is not None and len(row_titles) != n:
        raise DataError(f"row_titles has {len(row_titles)} entries but image has {n} rows")
    k = len(class_names)
    if classes is not None and len(classes) != k:
        raise DataError(f"classes has {len(classes)} entries but class_names has {k}")
    colors = np.asarray(classes.colors_float()) if classes is not None else class_colors(k)
    names = classes.names if classes is not None else class_names
    titles = {**COLUMN_TITLES, **(column_titles or {})}

    columns: list[tuple[str, str, list[np.ndarray]]] = [(titles["image"], "rgb", images)]
    for key, kind, rows in [("truth", "labels", truths), ("hard", "labels", hards),
                            ("soft", "soft", softs)]:  # fmt: skip
        if rows is not None:
            columns.append((titles[key], kind, rows))
    columns += [(name, "labels", rows) for name, rows in preds.items() if rows is not None]

    font = float(np.clip(panel_px / 26, 5, 9))
    if caption is None and softs is not None:
        caption = SOFT_CAPTION
    left = ROW_LABEL_PX if row_titles is not None else 0
    width = figure_pixel_size(n, len(columns), panel_px, row_titles is not None)[0]
    lines = caption_lines(caption, width, font)
    width, height = figure_pixel_size(n, len(columns), panel_px, row_titles is not None, len(lines))
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    FigureCanvasAgg(fig)  # Agg rendering without pyplot or a global backend switch
    for r in range(n):
        top = height - r * (panel_px + TITLE_PX) - TITLE_PX
        if row_titles is not None:
            fig.text(
                (left / 2) / width,
                (top - panel_px / 2) / height,
                str(row_titles[r]),
                rotation=90,
                ha="center",
                va="center",
                fontsize=font,
                fontweight="bold",
            )
        for c, (title, kind, rows) in enumerate(columns):
            ax = fig.add_axes(
                (
                    (left + c * panel_px) / width,
                    (top - panel_px) / height,
                    panel_px / width,
                    panel_px / height,
                )
            )
            _draw(ax, kind, rows[r], colors, rgb_bands)
            ax.set_title(title, fontsize=font, pad=3)
    _legend(fig, names, colors, lines, font)
    return save_figure(fig, path, dpi=DPI, format="png")


def _draw(ax: Any, kind: str, data: np.ndarray, colors: np.ndarray, rgb_bands) -> None:
    """One panel: an RGB stretch, a soft mask as mixed class colours, or a class map."""
    ax.set_axis_off()
    k = len(colors)
    if kind == "rgb":
        ax.imshow(stretch_rgb(data, rgb_bands), interpolation="nearest")
    elif kind == "soft":
        if data.shape[0] != k:
            raise DataError(f"soft_mask has {data.shape[0]} bands, expected {k}")
        mix = np.tensordot(np.clip(data, 0, None), colors, axes=(0, 0))
        ax.imshow(np.clip(mix, 0.0, 1.0), interpolation="nearest")
    else:
        norm = BoundaryNorm(np.arange(-0.5, k + 0.5), k)
        ax.imshow(data, cmap=ListedColormap(colors), norm=norm, interpolation="nearest")


def _legend(fig: Figure, names: Sequence[str], colors: np.ndarray, lines: list[str], font):
    """The class legend above the caption lines, at the bottom of the figure."""
    width, height = fig.get_size_inches() * DPI
    handles = [
        Patch(facecolor=colors[i], edgecolor="k", label=str(name)) for i, name in enumerate(names)
    ]
    caption_px = len(lines) * CAPTION_LINE_PX
    fig.legend(
        handles=handles,
        loc="lower center",
        ncol=min(len(names), max(3, int(width) // 100)),
        fontsize=font,
        frameon=False,
        bbox_to_anchor=(0.5, caption_px / height),
    )
    for i, line in enumerate(lines):
        y = (caption_px - (i + 0.5) * CAPTION_LINE_PX) / height
        fig.text(0.5, y, line, ha="center", va="center", fontsize=font)
