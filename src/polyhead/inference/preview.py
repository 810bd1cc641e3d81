"""Quick-look PNG of a class map: class colours, a legend of class names, and optionally the
input image's RGB stretch beside it. Reads a decimated overview (rasterio ``out_shape``), so a
large GeoTIFF previews in about the time of reading ``max_size`` x ``max_size`` pixels."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import Resampling

from polyhead.classes import ClassTable
from polyhead.errors import DataError
from polyhead.io import save_figure

NODATA_RGB = (1.0, 1.0, 1.0)  # white: pixels the class map leaves without a class
DPI = 100
LEGEND_PX = 150  # width of the legend column


def preview_shape(height: int, width: int, max_size: int) -> tuple[int, int]:
    """``(rows, cols)`` of the overview: the raster shrunk so its longer side is at most
    ``max_size`` (never enlarged)."""
    if max_size < 1:
        raise DataError(f"max_size must be >= 1, got {max_size}")
    scale = max(height, width) / max_size
    if scale <= 1:
        return height, width
    return max(1, math.ceil(height / scale)), max(1, math.ceil(width / scale))


def read_class_overview(path: str | os.PathLike, max_size: int) -> np.ma.MaskedArray:
    """Band 1 of a class map, decimated (nearest class, no mixing) to `preview_shape`; its
    nodata pixels masked."""
    with rasterio.open(path) as src:
        shape = preview_shape(src.height, src.width, max_size)
        data = src.read(1, out_shape=shape, resampling=Resampling.nearest, masked=True)
    return np.ma.masked_array(data, mask=np.ma.getmaskarray(data))


def _table(classes: ClassTable | Sequence[Any] | None, n_needed: int) -> ClassTable:
    if isinstance(classes, ClassTable):
        return classes
    return ClassTable.from_config(
        list(classes) if classes is not None else None,
        max(n_needed, len(classes or ())),
    )


def render_classes(labels: np.ma.MaskedArray, table: ClassTable, where: str) -> np.ndarray:
    """``[H, W, 3]`` colours in [0, 1]; DataError naming ``where`` for an id past the table."""
    ids = labels.compressed()
    top = int(ids.max()) if ids.size else -1
    if top >= len(table):
        raise DataError(f"{where}: holds class id {top} but classes names {len(table)} classes")
    palette = np.asarray([*table.colors_float(), NODATA_RGB])
    index = np.where(np.ma.getmaskarray(labels), len(table), labels.filled(0)).astype(np.intp)
    return palette[index]


def _image_overview(path: str | os.PathLike, shape: tuple[int, int], full: tuple[int, int]):
    with rasterio.open(path) as src:
        if (src.height, src.width) != full:
            raise DataError(
                f"{path}: image is {src.height}x{src.width} px but the class map is "
                f"{full[0]}x{full[1]}; give the image the class map was predicted from"
            )
        return src.read(out_shape=(src.count, *shape), resampling=Resampling.average)


def write_preview(
    class_map_path: str | os.PathLike,
    png_path: str | os.PathLike,
    *,
    classes: ClassTable | Sequence[Any] | None = None,
    image_path: str | os.PathLike | None = None,
    max_size: int = 1024,
    rgb_bands: Sequence[int] = (2, 1, 0),
) -> Path:
    """Write ``png_path``: the class map in class colours (longer side at most ``max_size``
    px; nodata white), a legend of class names with each one's share of the pixels, and the
    input image's percentile RGB stretch (`polyhead.display.stretch_rgb`, bands
    ``rgb_bands``) beside it when ``image_path`` is given.

    ``classes``: a `ClassTable` or a config ``classes`` list (default: ``class_k`` names and
    the default palette). Written atomically (`polyhead.io.save_figure`).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from polyhead.display import stretch_rgb

    labels = read_class_overview(class_map_path, max_size)
    ids = labels.compressed()
    table = _table(classes, int(ids.max()) + 1 if ids.size else 1)
    rgb = render_classes(labels, table, str(class_map_path))
    panels = [rgb]
    if image_path is not None:
        with rasterio.open(class_map_path) as src:
            full = (src.height, src.width)
        image = _image_overview(image_path, labels.shape, full)
        panels.insert(0, stretch_rgb(image, rgb_bands))
    counts = np.bincount(ids.astype(np.intp), minlength=len(table)) if ids.size else None
    h, w = labels.shape
    width, height = len(panels) * w + LEGEND_PX, max(h, 24 * (len(table) + 1))
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    for i, data in enumerate(panels):
        ax = fig.add_axes((i * w / width, (height - h) / height, w / width, h / height))
        ax.imshow(data, interpolation="nearest")
        ax.set_axis_off()
    share = [f" ({100 * c / ids.size:.1f}%)" for c in counts] if counts is not None else []
    share += [""] * (len(table) - len(share))
    handles = [
        Patch(facecolor=color, edgecolor="k", label=f"{name}{share[k]}")
        for k, (name, color) in enumerate(zip(table.names, table.colors_float(), strict=True))
    ]
    fig.legend(handles=handles, loc="upper right", fontsize=8, frameon=False)
    return save_figure(fig, png_path, dpi=DPI, format="png")
