"""Prediction over GeoTIFF rasters of any size: the sliding window's maps written as rasters.

`predict_raster` streams a raster through `polyhead.inference.sliding_window` and writes,
through `MapWriters`, a uint8 class map (with a colour table), optional per-class
probabilities (bands named by class), an optional uncertainty band and, when the predictor
returns one, a ``spread`` band, georeferenced like the input, whole or not at all. A
background thread reads ahead, another writes behind, while the model's device computes.

The raster is streamed in vertical bands of about ``block_size`` pixels (whole tile
columns; borders on the 256-pixel output blocks when they can be), each top to bottom, so
memory is about ``K * 2 * tile * (block_size + tile) * 4`` bytes (accumulators two strips
deep) plus a full-height strip ``overlap`` pixels wide carried from band to band: every tile
of the global grid runs once and the output equals blending the grid in one piece.
GDAL's block cache is capped at 64 MiB meanwhile unless GDAL_CACHEMAX is set, and
``io_threads`` worker threads decode the input's blocks and compress the outputs'
(GDAL_NUM_THREADS) unless GDAL_NUM_THREADS is set (`raster_inputs.gdal_env`).

Nodata: see `polyhead.inference.raster_inputs`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack, closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from polyhead.classes import ClassTable
from polyhead.errors import ConfigError, DataError
from polyhead.inference.pipeline import argmax_classes, auto_io_threads, check_precision
from polyhead.inference.pipeline_threads import BackgroundWriter, Waits
from polyhead.inference.pipeline_writers import SPREAD, MapWriters
from polyhead.inference.predictor import PROBABILITIES, UNCERTAINTY
from polyhead.inference.raster_inputs import (
    NodataMask,
    band_indexes,
    check_bands,
    georeference,
    open_raster,
)
from polyhead.inference.sliding_window import (
    HostBlock,
    TileCounts,
    _iter_blocks,
    _progress,
    as_predictor,
)
from polyhead.inference.tiling import Normalize, check_config, n_tiles, tiles_per_band
from polyhead.inference.uncertainty import predictive_entropy

#: chunks (one strip of one band) read ahead, and finished blocks queued for writing
READ_AHEAD, WRITE_AHEAD = 2, 2


@dataclass
class PredictionResult:
    """What `predict_raster` wrote."""

    class_map_path: Path
    probabilities_path: Path | None
    shape: tuple[int, int]
    n_classes: int
    n_tiles: int
    seconds: float
    uncertainty_path: Path | None = None
    n_tiles_run: int = 0  # tiles run through the model (each tile of the grid at most once)
    image_path: Path | None = None
    spread_path: Path | None = None  # written when the predictor returns a ``spread`` map
    n_tiles_nodata: int = 0  # tiles not run: every input pixel of theirs is nodata
    waits: Waits | None = None  # seconds the compute thread waited for reads and writes


def output_paths(
    image_path: Path,
    out_path: Path,
    write_probabilities: bool = False,
    probabilities_path: str | Path | None = None,
    write_uncertainty: bool = False,
    uncertainty_path: str | Path | None = None,
    spread_path: str | Path | None = None,
) -> tuple[dict[str, Path], Path]:
    """``({"classes", "proba", "uncertainty"} output paths, spread path)``: the last two
    outputs when wanted (default ``<out stem>_proba.tif`` / ``<out stem>_uncertainty.tif``),
    and where a ``spread`` map goes if the predictor returns one (default ``<out
    stem>_spread.tif``); ConfigError when two coincide or one is the input, DataError when
    the input is missing."""
    if not image_path.is_file():
        raise DataError(f"input raster not found: {image_path}")
    outputs = {"classes": out_path}
    for key, wanted, path in (
        ("proba", write_probabilities, probabilities_path),
        ("uncertainty", write_uncertainty, uncertainty_path),
    ):
        if wanted:
            outputs[key] = Path(path) if path else out_path.with_name(f"{out_path.stem}_{key}.tif")
    paths = [p.resolve() for p in (image_path, *outputs.values())]
    if len(set(paths)) != len(paths):
        raise ConfigError(f"output paths must differ from each other and the input {image_path}")
    spread = Path(spread_path) if spread_path else out_path.with_name(f"{out_path.stem}_spread.tif")
    if spread.resolve() in paths:
        raise ConfigError(f"spread_path {spread} must differ from the input and other outputs")
    return outputs, spread


def _check_rows(rows: tuple[int, int] | None, height: int, path: Path) -> tuple[int, int]:
    """``rows`` (all of them when None); ConfigError unless ``0 <= r0 < r1 <= height``."""
    if rows is None:
        return 0, height
    r0, r1 = rows
    if not 0 <= r0 < r1 <= height:
        raise ConfigError(f"{path}: rows must satisfy 0 <= r0 < r1 <= {height}, got {rows}")
    return r0, r1


def predict_raster(
    model: Any,
    image_path: str | Path,
    out_path: str | Path,
    tile_size: int = 512,
    overlap: int = 64,
    batch_size: int | None = 4,
    device: str | torch.device = "cpu",
    write_probabilities: bool = False,
    probabilities_path: str | Path | None = None,
    normalize: Normalize | None = None,
    blend: str = "gaussian",
    progress: bool = True,
    probabilities_dtype: str = "float32",
    bands: Sequence[int] | None = None,
    pad_mode: str = "reflect",
    write_uncertainty: bool = False,
    uncertainty_path: str | Path | None = None,
    block_size: int = 4096,
    precision: str = "fp32",
    channels_last: bool = False,
    classes: ClassTable | None = None,
    spread_path: str | Path | None = None,
    io_threads: int | None = None,
    overviews: bool = False,
    rows: tuple[int, int] | None = None,
    tags: Mapping[str, str] | None = None,
) -> PredictionResult:
    """Predict a class map (uint8 GeoTIFF) for a raster of any size in bounded memory.

    ``model`` is a `Predictor` (or a polyhead model or logits network, wrapped in one): it
    maps float32 tiles ``[B, C, tile, tile]`` to per-pixel maps; it is moved to ``device``
    and run in eval mode under ``torch.inference_mode`` (autocast at ``precision``: ``fp32``,
    ``bf16``, or ``fp16`` on CUDA only; ``channels_last`` memory format if asked).
    ``batch_size`` None: chosen for the device (`polyhead.inference.pipeline.auto_batch_size`).
    ``normalize``: albumentations ``Normalize`` steps run as a tensor op on the device; any
    other callable gets each tile as float32 HWC. ``bands`` are 1-based band indexes
    to read (default: all). Rasters smaller than a tile are padded with ``pad_mode``
    (numpy). Output CRS/transform are copied from the input; the class map gets the colours
    of ``classes`` (default `ClassTable.default`), the probabilities its names. With
    ``write_probabilities`` a K-band GeoTIFF of blended probabilities (``float32`` or
    ``uint8`` scaled 0-255) is written to ``probabilities_path`` (default
    ``<out stem>_proba.tif``). With ``write_uncertainty`` a float32 band is written to
    ``uncertainty_path`` (default ``<out stem>_uncertainty.tif``): the predictor's own
    ``uncertainty`` map when it has one (an uncertainty head), else the predictive entropy
    normalised by log K (0 = certain, 1 = uniform; see `polyhead.inference.uncertainty`).
    When the predictor returns a ``spread`` map it is written to ``spread_path`` (default
    ``<out stem>_spread.tif``, float32). With ``overviews`` every file gets internal
    overviews (2x, 4x, ... down to 256 pixels; the class map's by the most frequent class,
    the others' by the mean), so GIS software displays it at any zoom. Outputs are written
    to temp files, checked, and renamed at the end; on failure nothing is left behind.
    Reads run ahead and writes behind the compute in background threads; ``io_threads``
    GDAL worker threads decode the input and compress the outputs (None: 1 on a CPU, the
    CPUs of the process on an accelerator; `polyhead.inference.pipeline.auto_io_threads`).
    Streaming by bands of ``block_size`` columns bounds memory (see the module docstring).
    ``rows=(r0, r1)``: the outputs hold raster rows ``r0 .. r1`` only (georeferenced
    there); the whole raster is still predicted, the other rows being context for the
    blend (a row block of `polyhead.inference.distributed`). ``tags``: metadata written
    into every output (the run tag of `polyhead.inference.resume`). The bands read must be as many as the model's
    ``in_channels`` (DataError naming the file, before any tile runs); the input's nodata
    pixels are nodata in every output, and tiles of nodata only are not run.
    """
    check_config(tile_size, overlap, batch_size, blend)
    check_precision(precision, torch.device(device))
    threads = auto_io_threads(io_threads, torch.device(device))
    image_path, out_path = Path(image_path), Path(out_path)
    outputs, spread = output_paths(
        image_path, out_path, write_probabilities, probabilities_path, write_uncertainty,
        uncertainty_path, spread_path,
    )  # fmt: skip
    start = time.perf_counter()
    counts, waits = TileCounts(), Waits()
    with ExitStack() as stack:
        src = open_raster(stack, image_path, threads)
        height, width = src.height, src.width
        r0, r1 = _check_rows(rows, height, image_path)
        tiles_per_band(tile_size, overlap, block_size)  # validates block_size
        indexes = band_indexes(bands, src.count)
        check_bands(image_path, len(indexes), model)
        nodata = NodataMask(src, indexes)
        files = stack.enter_context(ExitStack())  # closed after the writer thread stopped
        writers = MapWriters(
            files, outputs, (r1 - r0, width), *georeference(src, r0, r1), probabilities_dtype,
            classes, spread, overviews, tags,
        )  # fmt: skip
        finish = _DeviceFinish(outputs)
        mask = NodataMask(open_raster(stack, image_path, threads), indexes)  # the writer thread's
        writer = _block_writer(writers, mask, finish, waits, (r0, r1))
        background = stack.enter_context(writer)
        total = n_tiles(height, width, tile_size, overlap)
        bar, advance = _progress(progress, total, image_path.name)
        stack.enter_context(bar)
        blocks = _iter_blocks(
            as_predictor(model),
            nodata.read,
            height,
            width,
            tile_size=tile_size,
            overlap=overlap,
            batch_size=batch_size,
            device=device,
            normalize=normalize,
            blend=blend,
            pad_mode=pad_mode,
            block_size=block_size,
            on_tiles=advance,
            precision=precision,
            channels_last=channels_last,
            prefetch_chunks=READ_AHEAD,
            finish=finish,
            counts=counts,
            deferred=True,
            waits=waits,
        )
        for y, x, maps in stack.enter_context(closing(blocks)):
            background.put(y, x, maps)
        background.close()
        committed = time.perf_counter()
        writers.commit()
        waits.commit = time.perf_counter() - committed
    return PredictionResult(
        class_map_path=out_path,
        probabilities_path=outputs.get("proba"),
        shape=(r1 - r0, width),
        n_classes=writers.n_classes,
        n_tiles=total,
        seconds=time.perf_counter() - start,
        uncertainty_path=outputs.get("uncertainty"),
        n_tiles_run=counts.run,
        image_path=image_path,
        spread_path=writers.outputs.get(SPREAD),
        n_tiles_nodata=counts.nodata,
        waits=waits,
    )


def _block_writer(
    writers: MapWriters,
    mask: NodataMask,
    finish: _DeviceFinish,
    waits: Waits,
    rows: tuple[int, int],
) -> BackgroundWriter:
    """The writer thread: the rows ``rows`` of each finished `HostBlock` into ``writers``
    (shifted to start at 0), its nodata pixels (``mask``, the thread's own open dataset)
    marked."""
    r0, r1 = rows

    def write(y: int, x: int, block: HostBlock) -> None:
        maps = block.maps()
        h, w = maps["classes"].shape[1:]
        lo, hi = max(y, r0), min(y + h, r1)
        if hi <= lo:
            return
        if (lo, hi) != (y, y + h):
            maps = {name: m[:, lo - y : hi - y] for name, m in maps.items()}
        writers.write(maps, lo - r0, x, mask(lo, x, hi - lo, w), finish.n_classes)

    return BackgroundWriter(write, WRITE_AHEAD, waits)


class _DeviceFinish:
    """What `predict_raster` copies back per block: the class map (arg-max on the device),
    and only the maps its files need (entropy computed there when no own uncertainty)."""

    def __init__(self, outputs: Mapping[str, Path]) -> None:
        self.proba, self.uncertainty = "proba" in outputs, "uncertainty" in outputs
        self.n_classes = 0
        #: only the class map is written: the blender may skip dividing by the weights
        self.argmax_only = not (self.proba or self.uncertainty)

    def __call__(self, maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        proba = maps[PROBABILITIES]
        self.n_classes = int(proba.shape[0])
        out = {"classes": argmax_classes(proba)}
        if self.proba:
            out[PROBABILITIES] = proba
        if self.uncertainty:
            own = maps.get(UNCERTAINTY)
            out[UNCERTAINTY] = own if own is not None else predictive_entropy(proba)[None]
        if SPREAD in maps:
            out[SPREAD] = maps[SPREAD]
        return out
