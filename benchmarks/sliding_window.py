"""Sliding-window inference on large rasters: throughput, peak memory, I/O floor, TTA cost.

Writes N x N, 4-band uint8 GeoTIFFs (tiled 512 x 512, uncompressed) and runs, each in a
fresh subprocess so that peak memory is that run's own (VmHWM from /proc/self/status;
``ru_maxrss`` would carry the parent's peak across fork + exec):

  - ``read``:  read the windows `predict_raster` reads (bands of ``--block-size``
    columns, one window per strip of a band), nothing else: the I/O floor;
  - ``tiny``:  `predict_raster` with a tiny conv model (3x3 conv 4->16, ReLU, 1x1 16->4),
    so the pipeline itself (reading, blending, writing) dominates;
  - ``tiny1``: the same in one band as wide as the raster (no tile run twice; memory
    grows with the width), for the cost of the band-border tiles (``--one-band-sizes``);
  - ``real``:  `predict_raster` with ``UPerNetDualHead(resnet18, decoder_channels=64)``,
    random init, head A (sizes in ``--real-sizes``; slow on CPU).

Tiles 512, overlap 64, Gaussian blending, batch 4, class map only; ``tiles run`` counts
every tile of the global grid once (``+0.0%``: band borders carry their overlap). GDAL's
block cache is whatever `predict_raster` sets (64 MiB) unless ``--gdal-cachemax``. Then the TTA cost
ratio, interleaved round after round on one raster in one process: plain, flips x4, and
flips x4 at scales (1, 0.75, 1.25) (12 passes), for the tiny and the real model.

    uv run python benchmarks/sliding_window.py                     # 2k, 8k, 16k; ~10 min
    uv run python benchmarks/sliding_window.py --sizes 2048 --tta-rounds 1
    uv run python benchmarks/sliding_window.py --tta-rounds 0 --one-band-sizes 8192
    uv run python benchmarks/sliding_window.py --tta-rounds 0 --real-sizes \
        --malloc-mmap-threshold 1048576   # peak memory without glibc heap fragmentation

Peak memory also moves by some 10-60 MiB from run to run and size to size with glibc's
dynamic mmap threshold (freed large buffers raise it, later ones then fragment the heap);
with a fixed threshold the figures are steady.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

TILE, OVERLAP, BATCH = 512, 64, 4
TTA_SPECS = {"plain": None, "flips": "flips", "flips+scales": "flips+scales=1,0.75,1.25"}


def write_raster(path: Path, size: int, compress: bool = False) -> Path:
    """A smooth-ish 4-band uint8 scene (blocks plus noise), tiled 512, uncompressed (or
    deflate with predictor 2 when ``compress``)."""
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=4,
        dtype="uint8",
        crs="EPSG:32633",
        transform=from_origin(500000, 5000000, 10, 10),
        tiled=True,
        blockxsize=512,
        blockysize=512,
        BIGTIFF="IF_SAFER",
    )
    if compress:
        profile.update(compress="deflate", predictor=2)
    rng = np.random.default_rng(0)
    x = np.arange(size)
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, size, 512):
            h = min(512, size - row)
            y = np.arange(row, row + h)[:, None]
            base = ((x[None] // 97 + y // 89) % 4 * 50 + 30).astype(np.uint8)
            noise = rng.integers(0, 20, (4, h, size), dtype=np.uint8)
            dst.write(base[None] + noise, window=Window(0, row, size, h))
    return path


def _hwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def _model(name: str):
    import torch
    from torch import nn

    torch.manual_seed(0)
    if name == "tiny":
        return nn.Sequential(nn.Conv2d(4, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 4, 1))
    from polyhead.models import UPerNetDualHead

    return UPerNetDualHead(
        encoder_name="resnet18",
        encoder_weights=None,
        in_channels=4,
        classes=4,
        decoder_channels=64,
        inference_head="A",
    )


def read_like_predict(src, block_size: int) -> int:
    """Read the input windows `predict_raster` reads, in its order (one per strip of each
    band, in the file's dtype); returns tiles covered."""
    from polyhead.inference.tiling import band_layout, tile_starts

    ys = tile_starts(src.height, TILE, OVERLAP)
    th, tw = min(TILE, src.height), min(TILE, src.width)
    tiles = 0
    for _, _, xs in band_layout(src.width, TILE, OVERLAP, block_size):
        for y0 in ys:
            src.read(window=Window(xs[0], y0, xs[-1] + tw - xs[0], th))
            tiles += len(xs)
    return tiles


def child(kind: str, path: Path, threads: int, block_size: int) -> None:
    """One measurement in this fresh process; prints a JSON line."""
    import torch

    torch.set_num_threads(threads)
    from polyhead.inference import n_tiles, predict_raster
    from polyhead.inference.raster_inputs import gdal_env

    model = None if kind == "read" else _model(kind.rstrip("1")).eval()
    base = _hwm_mib()
    start = time.perf_counter()
    with rasterio.open(path) as src:
        size = src.width
    if kind == "read":
        with gdal_env(), rasterio.open(path) as src:  # the same cache bound
            tiles = read_like_predict(src, block_size)
    else:
        out = path.with_name(f"{path.stem}_{kind}_classes.tif")
        res = predict_raster(
            model,
            path,
            out,
            tile_size=TILE,
            overlap=OVERLAP,
            batch_size=BATCH,
            progress=False,
            block_size=size if kind == "tiny1" else block_size,
        )
        tiles = res.n_tiles_run
        out.unlink()
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "kind": kind,
                "size": size,
                "seconds": seconds,
                "mpix_s": size * size / 1e6 / seconds,
                "peak_mib": _hwm_mib(),
                "base_mib": base,
                "tiles": tiles,
                "grid_tiles": n_tiles(size, size, TILE, OVERLAP),
            }
        )
    )


def child_tta(kind: str, path: Path, threads: int, rounds: int) -> None:
    """Interleaved TTA timings on one raster; prints a JSON line of per-variant times."""
    import torch

    torch.set_num_threads(threads)
    from polyhead.inference import TTAModel, build_tta, predict_raster

    model = _model(kind).eval()
    times: dict[str, list[float]] = {name: [] for name in TTA_SPECS}
    for _ in range(rounds):
        for name, spec in TTA_SPECS.items():
            wrapped = model if spec is None else TTAModel(model, **build_tta(spec))
            start = time.perf_counter()
            predict_raster(
                wrapped,
                path,
                path.with_name("tta_out.tif"),
                tile_size=TILE,
                overlap=OVERLAP,
                batch_size=BATCH,
                progress=False,
            )
            times[name].append(time.perf_counter() - start)
    print(json.dumps({"kind": kind, "times": times}))


def _run(args: list[str], cachemax: int | None = None, mmap_threshold: int | None = None) -> dict:
    env = dict(os.environ)
    if cachemax is not None:
        env["GDAL_CACHEMAX"] = str(cachemax)  # MB
    if mmap_threshold is not None:  # a fixed threshold turns off glibc's dynamic one
        env["MALLOC_MMAP_THRESHOLD_"] = str(mmap_threshold)
    out = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=True, env=env
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192, 16384])
    parser.add_argument("--real-sizes", type=int, nargs="*", default=[2048])
    parser.add_argument(
        "--one-band-sizes",
        type=int,
        nargs="*",
        default=[],
        help="sizes also run as one band as wide as the raster (tiny1)",
    )
    parser.add_argument(
        "--block-size",
        type=int,
        default=4096,
        help="predict_raster's block_size (band width, pixels)",
    )
    parser.add_argument(
        "--tta-size",
        type=int,
        nargs=2,
        default=[1024, 768],
        metavar=("TINY", "REAL"),
        help="raster size of the TTA runs per model",
    )
    parser.add_argument("--tta-rounds", type=int, default=2)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: the 2-core test machine is shared)",
    )
    parser.add_argument(
        "--gdal-cachemax",
        type=int,
        default=None,
        help="GDAL block cache (MB) in the children; default: predict_raster's",
    )
    parser.add_argument(
        "--malloc-mmap-threshold",
        type=int,
        default=None,
        metavar="BYTES",
        help="fixed glibc mmap threshold in the children: takes heap "
        "fragmentation out of the peak-memory figures (slower)",
    )
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, path = args.child[0], Path(args.child[1])
        if kind.startswith("tta-"):
            child_tta(kind[4:], path, args.threads, int(args.child[2]))
        else:
            child(kind, path, args.threads, args.block_size)
        return
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        cache = args.gdal_cachemax or os.environ.get("GDAL_CACHEMAX")
        print(
            f"tile {TILE}, overlap {OVERLAP}, batch {BATCH}, gaussian blend, block_size "
            f"{args.block_size}, torch threads {args.threads}, class map only, GDAL_CACHEMAX "
            f"{cache or 'predict_raster default (64 MiB)'}"
            + (
                f", MALLOC_MMAP_THRESHOLD_ {args.malloc_mmap_threshold}"
                if args.malloc_mmap_threshold
                else ""
            )
        )
        print(
            f"{'size':>6} {'model':>5} {'seconds':>8} {'MP/s':>7} {'peak MiB':>9} "
            f"{'base MiB':>9} {'growth MiB':>10} {'tiles run':>15}"
        )
        for size in sorted(set(args.sizes) | set(args.real_sizes)):
            path = Path(tmp) / f"scene_{size}.tif"
            start = time.perf_counter()
            write_raster(path, size)
            print(f"# wrote {size}x{size}x4 uint8 in {time.perf_counter() - start:.1f} s")
            kinds = ["read"] + (["tiny"] if size in args.sizes else [])
            kinds += ["tiny1"] if size in args.one_band_sizes else []
            kinds += ["real"] if size in args.real_sizes else []
            for kind in kinds:
                r = _run(
                    [
                        "--threads",
                        str(args.threads),
                        "--block-size",
                        str(args.block_size),
                        "--child",
                        kind,
                        str(path),
                    ],
                    args.gdal_cachemax,
                    args.malloc_mmap_threshold,
                )
                extra = 100 * (r["tiles"] / r["grid_tiles"] - 1)
                print(
                    f"{size:>6} {kind:>5} {r['seconds']:>8.1f} {r['mpix_s']:>7.2f} "
                    f"{r['peak_mib']:>9.0f} {r['base_mib']:>9.0f} "
                    f"{r['peak_mib'] - r['base_mib']:>10.0f} "
                    f"{r['tiles']:>6} ({extra:+4.1f}%)",
                    flush=True,
                )
            path.unlink()
        if args.tta_rounds < 1:
            return
        print(
            f"\nTTA cost (median of {args.tta_rounds} interleaved rounds; flips = 4 passes, "
            "flips+scales = 4 flips x scales (1, 0.75, 1.25) = 12 passes)"
        )
        for kind, size in zip(("tiny", "real"), args.tta_size, strict=True):
            path = write_raster(Path(tmp) / f"tta_{size}.tif", size)
            r = _run(
                [
                    "--threads",
                    str(args.threads),
                    "--child",
                    f"tta-{kind}",
                    str(path),
                    str(args.tta_rounds),
                ],
                args.gdal_cachemax,
            )
            med = {k: statistics.median(v) for k, v in r["times"].items()}
            print(
                f"{kind:>5} {size}x{size}: "
                + ", ".join(f"{k} {v:.1f} s ({v / med['plain']:.2f}x)" for k, v in med.items()),
                flush=True,
            )


if __name__ == "__main__":
    main()
