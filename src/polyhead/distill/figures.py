"""Figure: image, student class map, student uncertainty and ensemble uncertainty side by side."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure

from polyhead.demo.figures import class_colors, stretch_rgb
from polyhead.errors import DataError


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
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8,
                   frameon=False)
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
