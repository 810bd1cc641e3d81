"""GeoTIFF writers that leave no partial file behind."""

from __future__ import annotations

import os
import uuid
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

_BLOCK = 256


def geotiff_profile(
    height: int, width: int, count: int, dtype: str, crs: Any = None, transform: Any = None
) -> dict[str, Any]:
    """Tiled, deflate-compressed GTiff profile with the given georeferencing."""
    block = _BLOCK if max(height, width) > _BLOCK else 16 * -(-max(height, width) // 16)
    profile: dict[str, Any] = dict(
        driver="GTiff",
        height=height,
        width=width,
        count=count,
        dtype=dtype,
        tiled=True,
        blockxsize=block,
        blockysize=block,
        compress="deflate",
        predictor=3 if np.dtype(dtype).kind == "f" else 2,
        BIGTIFF="IF_SAFER",
    )
    if crs is not None:
        profile["crs"] = crs
    if transform is not None:
        profile["transform"] = transform
    return profile


class AtomicGeoTiff:
    """Write a GeoTIFF to a hidden temp file next to ``path``; `commit` renames it.

    Used as a context manager: leaving the block with an exception (or without
    `commit`) closes and deletes the temp file, so ``path`` is never partial.
    """

    def __init__(self, path: str | Path, profile: dict[str, Any]) -> None:
        self.path = Path(path)
        self.tmp_path = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}.tmp")
        self.profile = profile
        self._dst: Any = None

    def __enter__(self) -> AtomicGeoTiff:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            self._dst = rasterio.open(self.tmp_path, "w", **self.profile)
        return self

    def write(self, data: np.ndarray, row: int, col: int = 0) -> None:
        """Write ``data`` ``[count, h, w]`` at rows ``row .. row + h`` and columns
        ``col .. col + w``."""
        window = Window(col, row, data.shape[2], data.shape[1])
        self._dst.write(data.astype(self.profile["dtype"], copy=False), window=window)

    def close(self) -> None:
        """Flush and close the temp file (idempotent)."""
        if self._dst is not None:
            self._dst.close()
            self._dst = None

    def commit(self) -> Path:
        """Close and atomically move the temp file to ``path``."""
        self.close()
        os.replace(self.tmp_path, self.path)
        return self.path

    def abort(self) -> None:
        """Close and delete the temp file."""
        try:
            self.close()
        finally:
            self.tmp_path.unlink(missing_ok=True)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.tmp_path.exists() or self._dst is not None:
            self.abort()
