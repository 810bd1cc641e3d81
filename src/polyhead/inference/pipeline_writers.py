"""The GeoTIFFs of a prediction, written block by block: `MapWriters`.

A uint8 class map with a colour table, per-class probabilities with named bands, an
uncertainty band and, when the predictor returns one, a ``spread`` band; nodata as
`polyhead.inference.rasters` describes. Used by `predict_raster` (from its writer thread)
and by the CRF path.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from polyhead.classes import ClassTable
from polyhead.errors import ConfigError, DataError
from polyhead.inference.predictor import PROBABILITIES, UNCERTAINTY
from polyhead.inference.uncertainty import predictive_entropy
from polyhead.io import OVERVIEW_RESAMPLING, AtomicGeoTiff, BlockRows, geotiff_profile

PROBABILITY_DTYPES = ("float32", "uint8")
#: class-map value of nodata pixels (set as the file's nodata)
CLASS_NODATA = 255
#: the predictor's map of the spread across TTA views / MC samples, written when present
SPREAD = "spread"


class MapWriters:
    """The rasters of a prediction, written block by block from blended maps.

    ``outputs`` is the dict of `output_paths`. ``classes``: the maps' own ``classes`` block when
    given (the arg-max taken on the device), else the arg-max of ``probabilities`` (uint8,
    with ``table``'s colours); ``proba``: the probabilities (``float32``, or ``uint8``
    scaled 0-255; bands named by ``table``); ``uncertainty``: the maps' own ``uncertainty``
    when present, else the normalised predictive entropy; ``spread`` (to ``spread_path``,
    float32) whenever the maps hold one. Blocks arriving top to bottom are written in whole
    rows of the files' blocks (`polyhead.io.BlockRows`): GDAL then compresses them as they
    are written, in the writer's thread, not all at the close. ``overviews``: each file
    gets internal overviews at `commit` (the class map's by the most frequent class, the
    others' by the mean). ``tags``: metadata every file gets (the run tag of
    `polyhead.inference.resume`). Pixels marked in ``write``'s ``nodata`` are written as
    nodata (see the module docstring). The files open on the first block (K is known
    then); `commit` checks every file before moving any into place. Use inside an
    ``ExitStack``.
    """

    def __init__(
        self,
        stack: ExitStack,
        outputs: Mapping[str, Path],
        shape: tuple[int, int],
        crs: Any,
        transform: Any,
        probabilities_dtype: str = "float32",
        table: ClassTable | None = None,
        spread_path: Path | None = None,
        overviews: bool = False,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        if probabilities_dtype not in PROBABILITY_DTYPES:
            raise ConfigError(
                f"probabilities_dtype must be 'float32' or 'uint8', got {probabilities_dtype!r}"
            )
        self.stack, self.outputs, self.shape = stack, dict(outputs), shape
        self.crs, self.transform, self.dtype = crs, transform, probabilities_dtype
        self.table, self.spread_path, self.overviews = table, spread_path, overviews
        self.tags = dict(tags or {})
        self.writers: dict[str, AtomicGeoTiff] = {}
        self.rows: dict[str, BlockRows] = {}  # each file's writes, in whole block rows
        self.n_classes = 0

    def _open(self, n_classes: int, spread: bool) -> None:
        if n_classes > 256:
            raise ConfigError(f"a uint8 class map holds at most 256 classes, got {n_classes}")
        table = self.table if self.table is not None else ClassTable.default(n_classes)
        if len(table) != n_classes:
            raise ConfigError(f"the class table names {len(table)} classes, the model {n_classes}")
        self.n_classes = n_classes
        if spread and self.spread_path is not None:
            self.outputs[SPREAD] = self.spread_path
        class_nodata = CLASS_NODATA if n_classes <= CLASS_NODATA else None
        layout = {"classes": (1, "uint8", class_nodata), "uncertainty": (1, "float32", np.nan)}
        layout["proba"] = (n_classes, self.dtype, np.nan if self.dtype == "float32" else None)
        layout[SPREAD] = (1, "float32", np.nan)
        for key, path in self.outputs.items():
            count, dtype, nodata = layout[key]
            profile = geotiff_profile(*self.shape, count, dtype, self.crs, self.transform)
            if nodata is not None:
                profile["nodata"] = nodata
            resampling = OVERVIEW_RESAMPLING[key == "classes"] if self.overviews else None
            writer = AtomicGeoTiff(path, profile, overviews=resampling)
            self.writers[key] = self.stack.enter_context(writer)
            if self.tags:
                writer.dataset.update_tags(**self.tags)
            self.rows[key] = BlockRows(
                self.writers[key].write, profile["blockysize"], self.shape[0]
            )
        self._describe(table)

    def _describe(self, table: ClassTable) -> None:
        """Colour table of the class map, band names of the other files."""
        self.writers["classes"].dataset.write_colormap(1, table.colormap())
        names = {"proba": table.names, "uncertainty": ("uncertainty",), SPREAD: (SPREAD,)}
        for key, writer in self.writers.items():
            for band, name in enumerate(names.get(key, ()), start=1):
                writer.dataset.set_band_description(band, name)

    def write(
        self,
        maps: Mapping[str, np.ndarray],
        row: int,
        col: int,
        nodata: np.ndarray | None = None,
        n_classes: int | None = None,
    ) -> None:
        """Write the block of blended ``maps`` whose top-left pixel is ``(row, col)``;
        ``nodata`` (``[h, w]`` bool, optional) marks the block's nodata pixels.
        ``n_classes``: K when ``maps`` hold ``classes`` but no ``probabilities``."""
        proba = maps.get(PROBABILITIES)
        if not self.writers:
            self._open(n_classes or proba.shape[0], SPREAD in maps)  # type: ignore[union-attr]
        if nodata is not None and self.n_classes > CLASS_NODATA:
            raise DataError(
                f"{self.outputs['classes']}: the input has nodata pixels, but a class map of "
                f"{self.n_classes} classes has no value left to mark them"
            )
        classes = maps.get("classes")
        if classes is None:
            classes = proba.argmax(axis=0)[None].astype(np.uint8)  # type: ignore[union-attr]
        self.rows["classes"].add(_masked(classes, nodata, CLASS_NODATA), row, col)
        if "uncertainty" in self.writers:
            own = maps.get(UNCERTAINTY)
            unc = own if own is not None else predictive_entropy(proba)[None]
            self.rows["uncertainty"].add(_masked(unc, nodata, np.nan), row, col)
        if SPREAD in self.writers:
            self.rows[SPREAD].add(_masked(maps[SPREAD], nodata, np.nan), row, col)
        if "proba" in self.writers:
            fill = np.nan
            if self.dtype == "uint8":
                proba, fill = np.clip(np.rint(proba * 255.0), 0, 255), 0
            self.rows["proba"].add(_masked(proba, nodata, fill), row, col)

    def commit(self) -> None:
        """Write any rows still held, close and check every file, then move them all into
        place."""
        for rows in self.rows.values():
            rows.flush()
        for writer in self.writers.values():
            writer.close()
        for writer in reversed(self.writers.values()):
            writer.commit()


def _masked(block: np.ndarray, nodata: np.ndarray | None, fill: float) -> np.ndarray:
    """``block [c, h, w]`` with ``fill`` at the ``nodata`` pixels (a copy when any)."""
    if nodata is None:
        return block
    return np.where(nodata[None], np.asarray(fill, block.dtype), block)
