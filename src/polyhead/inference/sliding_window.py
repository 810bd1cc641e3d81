"""Sliding-window inference over arrays and large rasters, streamed strip by strip.

Tiles of ``tile_size`` overlap by ``overlap`` pixels; the last tile of each axis is
shifted to end at the border. Softmax probabilities of overlapping tiles are
blended with a weight window and normalised by the summed weights. Rasters are
processed one strip (row of tiles) at a time and finished rows are written out
immediately, so memory scales with ``width * tile_size * K``, not with height.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from polyhead.errors import ConfigError, DataError
from polyhead.inference.tiling import blend_window, check_config, n_tiles, tile_starts
from polyhead.inference.uncertainty import predictive_entropy
from polyhead.inference.writers import AtomicGeoTiff, geotiff_profile

Normalize = Callable[..., Any]
ReadRows = Callable[[int, int], np.ndarray]


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


def _apply_normalize(normalize: Normalize | None, tile: np.ndarray) -> np.ndarray:
    """Apply ``normalize`` to a float32 HWC tile (albumentations transforms get image=)."""
    if normalize is None:
        return tile
    if type(normalize).__module__.startswith("albumentations"):
        out = normalize(image=tile)["image"]
    else:
        out = normalize(tile)
    return np.asarray(out, dtype=np.float32)


@contextmanager
def _eval_mode(model: Any, device: torch.device) -> Iterator[None]:
    was_training = isinstance(model, torch.nn.Module) and model.training
    if isinstance(model, torch.nn.Module):
        model.to(device).eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


def _run_model(
    model: Any,
    batch: np.ndarray,
    device: torch.device,
    window: torch.Tensor,
    output_key: str | int | None,
) -> np.ndarray:
    """Weighted softmax probabilities ``[B, K, T, T]`` (float32, on CPU)."""
    with torch.inference_mode():
        out = model(torch.from_numpy(batch).to(device))
        if output_key is not None:
            out = out[output_key]
        if isinstance(out, Mapping) or not isinstance(out, torch.Tensor):
            raise ConfigError("model must return a logits tensor; pass output_key to pick a head")
        if out.ndim != 4 or out.shape[0] != batch.shape[0] or out.shape[2:] != batch.shape[2:]:
            raise ConfigError(
                f"model output must be [B, K, h, w] = [{batch.shape[0]}, K, "
                f"{batch.shape[2]}, {batch.shape[3]}], got {list(out.shape)}"
            )
        return (torch.softmax(out.float(), dim=1) * window).cpu().numpy()


def _iter_prob_rows(
    model: Any,
    read_rows: ReadRows,
    height: int,
    width: int,
    *,
    tile_size: int,
    overlap: int,
    batch_size: int,
    device: str | torch.device,
    normalize: Normalize | None,
    blend: str,
    pad_mode: str,
    output_key: str | int | None,
    on_tiles: Callable[[int], None] | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(first_row, probabilities [K, n, width])`` blocks of finished rows, in order.

    ``read_rows(row, n)`` returns the input rows ``[C, n, width]`` as float32.
    """
    dev = torch.device(device)
    ys, xs = tile_starts(height, tile_size, overlap), tile_starts(width, tile_size, overlap)
    th, tw = min(tile_size, height), min(tile_size, width)
    w_full = blend_window(tile_size, overlap, blend)
    w_tile, window = w_full[:th, :tw], torch.from_numpy(w_full).to(dev)
    acc: np.ndarray | None = None  # [K, th, width] for rows acc_y0 .. acc_y0 + th
    wsum = np.zeros((th, width), np.float32)
    acc_y0 = 0
    with _eval_mode(model, dev):
        for y0 in ys:
            if y0 > acc_y0:  # rows before this strip get no more contributions
                n = y0 - acc_y0
                assert acc is not None
                yield acc_y0, acc[:, :n] / wsum[None, :n]
                acc[:, :-n], wsum[:-n] = acc[:, n:], wsum[n:]
                acc[:, -n:], wsum[-n:] = 0.0, 0.0
                acc_y0 = y0
            strip = np.moveaxis(np.asarray(read_rows(y0, th), np.float32), 0, -1)  # [th, W, C]
            for b0 in range(0, len(xs), batch_size):
                bx = xs[b0 : b0 + batch_size]
                tiles = [_apply_normalize(normalize, strip[:, x0 : x0 + tw]) for x0 in bx]
                pad = ((0, tile_size - th), (0, tile_size - tw), (0, 0))
                batch = np.stack(
                    [
                        np.pad(t, pad, mode=pad_mode) if th < tile_size or tw < tile_size else t
                        for t in tiles
                    ]
                )
                probs = _run_model(
                    model,
                    np.ascontiguousarray(batch.transpose(0, 3, 1, 2)),
                    dev,
                    window,
                    output_key,
                )
                if acc is None:
                    acc = np.zeros((probs.shape[1], th, width), np.float32)
                for x0, p in zip(bx, probs, strict=True):
                    acc[:, :, x0 : x0 + tw] += p[:, :th, :tw]
                    wsum[:, x0 : x0 + tw] += w_tile
                if on_tiles is not None:
                    on_tiles(len(bx))
    assert acc is not None
    yield acc_y0, acc[:, : height - acc_y0] / wsum[None, : height - acc_y0]


def _progress(enabled: bool, total: int, label: str) -> tuple[Progress, Callable[[int], None]]:
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )
    task = bar.add_task(label, total=total)
    return bar, lambda n: bar.advance(task, n)


def predict_array(
    model: Any,
    image: np.ndarray,
    tile_size: int = 512,
    overlap: int = 64,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    normalize: Normalize | None = None,
    blend: str = "gaussian",
    pad_mode: str = "reflect",
    output_key: str | int | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Blended sliding-window probabilities ``[K, H, W]`` (float32) for ``image [C, H, W]``.

    Same core as `predict_raster`; see there for the arguments.
    """
    check_config(tile_size, overlap, batch_size, blend)
    image = np.asarray(image)
    if image.ndim != 3 or min(image.shape) < 1:
        raise DataError(f"image must be a non-empty [C, H, W] array, got shape {image.shape}")
    _, height, width = image.shape
    total = n_tiles(height, width, tile_size, overlap)
    bar, advance = _progress(progress, total, "predicting")
    rows = _iter_prob_rows(
        model,
        lambda y, n: image[:, y : y + n],
        height,
        width,
        tile_size=tile_size,
        overlap=overlap,
        batch_size=batch_size,
        device=device,
        normalize=normalize,
        blend=blend,
        pad_mode=pad_mode,
        output_key=output_key,
        on_tiles=advance,
    )
    with bar, closing(rows):
        blocks = [block for _, block in rows]
    return np.concatenate(blocks, axis=1)


def predict_raster(
    model: Any,
    image_path: str | Path,
    out_path: str | Path,
    tile_size: int = 512,
    overlap: int = 64,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    write_probabilities: bool = False,
    probabilities_path: str | Path | None = None,
    normalize: Normalize | None = None,
    blend: str = "gaussian",
    progress: bool = True,
    probabilities_dtype: str = "float32",
    bands: Sequence[int] | None = None,
    pad_mode: str = "reflect",
    output_key: str | int | None = None,
    write_uncertainty: bool = False,
    uncertainty_path: str | Path | None = None,
) -> PredictionResult:
    """Predict a class map (uint8 GeoTIFF) for a raster of any size, streaming by strips.

    ``model`` maps float32 ``[B, C, tile, tile]`` to logits ``[B, K, tile, tile]``
    (an ``nn.Module`` is moved to ``device`` and run in eval mode under
    ``torch.inference_mode``; ``output_key`` picks one output of a multi-head model).
    ``normalize`` gets each tile as float32 HWC (callable or albumentations
    transform). ``bands`` are 1-based band indexes to read (default: all). Rasters
    smaller than a tile are padded with ``pad_mode`` (numpy). Output CRS/transform
    are copied from the input. With ``write_probabilities`` a K-band GeoTIFF of
    blended probabilities (``float32`` or ``uint8`` scaled 0-255) is written to
    ``probabilities_path`` (default ``<out stem>_proba.tif``). With ``write_uncertainty``
    a float32 band of predictive entropy normalised by log K (0 = certain, 1 = uniform;
    see `polyhead.inference.uncertainty`) is written to ``uncertainty_path`` (default
    ``<out stem>_uncertainty.tif``). Outputs are written
    to temp files and renamed at the end; on failure nothing is left behind.
    """
    check_config(tile_size, overlap, batch_size, blend)
    if probabilities_dtype not in ("float32", "uint8"):
        raise ConfigError(
            f"probabilities_dtype must be 'float32' or 'uint8', got {probabilities_dtype!r}"
        )
    image_path, out_path = Path(image_path), Path(out_path)
    proba_path = None
    if write_probabilities:
        proba_path = (
            Path(probabilities_path)
            if probabilities_path
            else out_path.with_name(f"{out_path.stem}_proba.tif")
        )
    unc_path = None
    if write_uncertainty:
        unc_path = (
            Path(uncertainty_path)
            if uncertainty_path
            else out_path.with_name(f"{out_path.stem}_uncertainty.tif")
        )
    if not image_path.is_file():
        raise DataError(f"input raster not found: {image_path}")
    paths = [p.resolve() for p in (image_path, out_path, proba_path, unc_path) if p is not None]
    if len(set(paths)) != len(paths):
        raise ConfigError(f"output paths must differ from each other and the input {image_path}")
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        src = rasterio.open(image_path)
    with src, ExitStack() as stack:
        height, width = src.height, src.width
        indexes = list(bands) if bands is not None else list(range(1, src.count + 1))
        if not indexes or min(indexes) < 1 or max(indexes) > src.count:
            raise ConfigError(f"bands must be 1-based indexes in 1..{src.count}, got {bands}")
        crs = src.crs
        transform = None if src.transform.is_identity and crs is None else src.transform

        def read_rows(y: int, n: int) -> np.ndarray:
            return src.read(indexes, window=Window(0, y, width, n), out_dtype=np.float32)

        total = n_tiles(height, width, tile_size, overlap)
        bar, advance = _progress(progress, total, image_path.name)
        stack.enter_context(bar)
        writers: list[AtomicGeoTiff] = []
        n_classes = 0
        rows = stack.enter_context(
            closing(
                _iter_prob_rows(
                    model,
                    read_rows,
                    height,
                    width,
                    tile_size=tile_size,
                    overlap=overlap,
                    batch_size=batch_size,
                    device=device,
                    normalize=normalize,
                    blend=blend,
                    pad_mode=pad_mode,
                    output_key=output_key,
                    on_tiles=advance,
                )
            )
        )
        for y, proba in rows:
            if not writers:  # K is known once the first rows are done
                n_classes = proba.shape[0]
                if n_classes > 256:
                    raise ConfigError(
                        f"a uint8 class map holds at most 256 classes, got {n_classes}"
                    )
                writers.append(
                    stack.enter_context(
                        AtomicGeoTiff(
                            out_path, geotiff_profile(height, width, 1, "uint8", crs, transform)
                        )
                    )
                )
                if proba_path is not None:
                    writers.append(
                        stack.enter_context(
                            AtomicGeoTiff(
                                proba_path,
                                geotiff_profile(
                                    height, width, n_classes, probabilities_dtype, crs, transform
                                ),
                            )
                        )
                    )
                if unc_path is not None:
                    writers.append(
                        stack.enter_context(
                            AtomicGeoTiff(
                                unc_path,
                                geotiff_profile(height, width, 1, "float32", crs, transform),
                            )
                        )
                    )
            writers[0].write(proba.argmax(axis=0)[None].astype(np.uint8), y)
            if unc_path is not None:
                writers[-1].write(predictive_entropy(proba)[None], y)
            if proba_path is not None:
                if probabilities_dtype == "uint8":
                    proba = np.clip(np.rint(proba * 255.0), 0, 255)
                writers[1].write(proba, y)
        for writer in reversed(writers):
            writer.commit()
    return PredictionResult(
        class_map_path=out_path,
        probabilities_path=proba_path,
        shape=(height, width),
        n_classes=n_classes,
        n_tiles=total,
        seconds=time.perf_counter() - start,
        uncertainty_path=unc_path,
    )
