"""Dense-CRF refinement of a whole raster: `predict_raster_crf` (the sliding window's
blended probabilities refined by `polyhead.inference.crf.dense_crf`, written like
`predict_raster` writes) and `check_crf_size`, the size limit of refining in memory."""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.errors import NotGeoreferencedWarning

from polyhead.classes import ClassTable
from polyhead.errors import ConfigError
from polyhead.inference.crf import dense_crf
from polyhead.inference.pipeline import auto_io_threads
from polyhead.inference.pipeline_writers import MapWriters
from polyhead.inference.predictor import PROBABILITIES
from polyhead.inference.raster_inputs import NodataMask, band_indexes, georeference, open_raster
from polyhead.inference.rasters import PredictionResult, output_paths
from polyhead.inference.sliding_window import as_predictor, predict_maps
from polyhead.inference.tiling import n_tiles

#: largest raster (pixels) refined whole in memory
CRF_MAX_PIXELS = 4096 * 4096


def check_crf_size(image_path: str | Path, max_pixels: int = CRF_MAX_PIXELS) -> tuple[int, int]:
    """``(height, width)`` of a raster; `ConfigError` if too large for whole-image CRF."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(image_path) as src:
            height, width = src.height, src.width
    if height * width > max_pixels:
        raise ConfigError(
            f"CRF refinement works on the whole image in memory: {image_path} is "
            f"{height}x{width} px, more than {max_pixels} px (e.g. 4096x4096). Split the raster "
            "into tiles (e.g. gdal_retile.py -ps 4096 4096) and refine each, or predict "
            "without CRF (sliding-window prediction itself has no size limit)."
        )
    return height, width


def predict_raster_crf(
    model: Any,
    image_path: str | Path,
    out_path: str | Path,
    crf_kwargs: Mapping[str, Any] | None = None,
    write_probabilities: bool = False,
    probabilities_path: str | Path | None = None,
    write_uncertainty: bool = False,
    uncertainty_path: str | Path | None = None,
    bands: Sequence[int] | None = None,
    max_pixels: int = CRF_MAX_PIXELS,
    classes: ClassTable | None = None,
    spread_path: str | Path | None = None,
    io_threads: int | None = None,
    overviews: bool = False,
    probabilities_dtype: str = "float32",
    tags: Mapping[str, str] | None = None,
    **predict_kwargs: Any,
) -> PredictionResult:
    """`predict_raster` for an image that fits in memory, refined by `dense_crf`.

    The blended sliding-window probabilities of the whole image (`predict_maps`;
    ``predict_kwargs``: tile_size, overlap, batch_size, device, normalize, blend,
    pad_mode, progress, precision, channels_last) are refined with ``dense_crf(probs, raw bands, **crf_kwargs)``; the
    class map, optional float32 probabilities and uncertainty (the predictor's own map,
    else the normalised entropy of the refined probabilities) are written like
    `predict_raster` does (same georeferencing, class table ``classes``, a ``spread`` map
    to ``spread_path``, atomic). Rasters above ``max_pixels``
    raise `ConfigError` (see `check_crf_size`). ``io_threads`` (GDAL's worker threads),
    ``overviews``, ``probabilities_dtype`` and ``tags`` as for `predict_raster`.
    """
    start = time.perf_counter()
    threads = auto_io_threads(io_threads, torch.device(predict_kwargs.get("device", "cpu")))
    image_path, out_path = Path(image_path), Path(out_path)
    outputs, spread = output_paths(
        image_path, out_path, write_probabilities, probabilities_path, write_uncertainty,
        uncertainty_path, spread_path,
    )  # fmt: skip
    height, width = check_crf_size(image_path, max_pixels)
    with ExitStack() as stack:
        src = open_raster(stack, image_path, threads)
        indexes = band_indexes(bands, src.count)
        image = src.read(indexes)  # the CRF's guide: the raw bands
        pixels = image.astype(np.float32)
        bad = NodataMask(src, indexes)(0, 0, height, width, pixels)
        if bad is not None:
            pixels[:, bad] = 0.0  # nodata pixels read as 0, as when tiling
        writers = MapWriters(
            stack, outputs, (height, width), *georeference(src), probabilities_dtype,
            table=classes, spread_path=spread, overviews=overviews, tags=tags,
        )  # fmt: skip
        maps = predict_maps(as_predictor(model), pixels, **predict_kwargs)
        maps[PROBABILITIES] = dense_crf(maps[PROBABILITIES], image, **dict(crf_kwargs or {}))
        writers.write(maps, 0, 0, bad)
        writers.commit()
    return PredictionResult(
        class_map_path=out_path,
        probabilities_path=outputs.get("proba"),
        shape=(height, width),
        n_classes=writers.n_classes,
        n_tiles=n_tiles(
            height, width, predict_kwargs.get("tile_size", 512), predict_kwargs.get("overlap", 64)
        ),
        seconds=time.perf_counter() - start,
        uncertainty_path=outputs.get("uncertainty"),
        image_path=image_path,
    )
