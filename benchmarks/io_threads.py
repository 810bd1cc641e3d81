"""What GDAL worker threads (``predict --io-threads``) buy: reads of a compressed input,
writes of class maps, and predict_raster itself, at 1 thread against N.

Writes, in a temp folder, a deflate-compressed 4-band uint8 GeoTIFF (tiled 512, the blocks
plus noise scene of `sliding_window.write_raster`) and measures, the variants interleaved
round by round after one warm-up each (medians; ratios are medians of per-round ratios):

  1. read: every window predict_raster reads (one strip per band), as MP/s of the raster;
  2. write: a uint8 class map with polyhead's profile (tiled 256, deflate), three kinds of
     map: ``noise`` (a class per pixel, the worst case), ``blocky`` (noise upsampled 4x, like
     a decoder at 1/4 resolution) and ``smooth`` (large regions);
  3. predict_raster with a 1x1 conv 4 -> 4 on that input, on --device (torch at
     --torch-threads on a CPU), with ``io_threads`` 1 and N: a random conv (its class map
     is nearly one class) and the identity (the class is the band with the most noise: a
     class map with a class per pixel, the worst case to compress).

    python benchmarks/io_threads.py --size 4096 --threads 2 --rounds 5
    python benchmarks/io_threads.py --size 8192 --threads 16 --device cuda   # a GPU machine
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.windows import Window
from sliding_window import write_raster  # benchmarks/ (this script's folder) is on sys.path

from polyhead.inference import predict_raster
from polyhead.inference.rasters import gdal_env
from polyhead.inference.tiling import band_layout, tile_starts
from polyhead.io import geotiff_profile

TILE, OVERLAP, BLOCK = 512, 64, 4096


def class_maps(size: int) -> dict[str, np.ndarray]:
    """One strip (512 rows) of each kind of class map, repeated down the raster."""
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 6, (1, 512, size), dtype=np.uint8)
    coarse = rng.integers(0, 6, (1, 128, size // 4), dtype=np.uint8)
    blocky = np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2)
    rows, cols = np.arange(512)[:, None], np.arange(size)[None]
    smooth = ((cols // 97 + rows // 89) % 6).astype(np.uint8)[None]
    return {"noise": noise, "blocky": blocky, "smooth": smooth}


def read_run(path: Path, threads: int) -> None:
    with gdal_env(threads), rasterio.open(path) as src:
        ys = tile_starts(src.height, TILE, OVERLAP)
        for _, _, xs in band_layout(src.width, TILE, OVERLAP, BLOCK):
            for y0 in ys:
                src.read(window=Window(xs[0], y0, xs[-1] + TILE - xs[0], TILE))


def write_run(out: Path, strip: np.ndarray, size: int, threads: int) -> None:
    with gdal_env(threads), rasterio.open(out, "w", **geotiff_profile(size, size, 1, "uint8")) as d:
        for row in range(0, size, 512):
            h = min(512, size - row)
            d.write(strip[:, :h], window=Window(0, row, size, h))


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(runs: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    for fn in runs.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            times[name].append(timed(fn))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2, help="GDAL threads against 1")
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="predict_raster's device")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="markdown table to write")
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)
    n, mp = args.threads, args.size**2 / 1e6
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        image = write_raster(Path(tmp) / "in.tif", args.size, compress=True)
        out = Path(tmp) / "out.tif"
        t = interleaved({k: (lambda k=k: read_run(image, k)) for k in (1, n)}, args.rounds)
        rows.append(("read windows of the deflate input", t[1], t[n]))
        for kind, strip in class_maps(args.size).items():
            runs = {k: (lambda k=k, s=strip: write_run(out, s, args.size, k)) for k in (1, n)}
            t = interleaved(runs, args.rounds)
            rows.append((f"write a class map, {kind}", t[1], t[n]))
        torch.manual_seed(0)
        random_conv, identity = torch.nn.Conv2d(4, 4, 1), torch.nn.Conv2d(4, 4, 1)
        with torch.no_grad():
            identity.weight.copy_(torch.eye(4)[:, :, None, None])
            identity.bias.zero_()

        def predict(conv: torch.nn.Module, threads: int) -> Callable[[], object]:
            return lambda: predict_raster(
                conv, image, out, tile_size=TILE, overlap=OVERLAP, block_size=BLOCK,
                progress=False, io_threads=threads, device=args.device, batch_size=None,
            )  # fmt: skip

        where = args.device if args.device != "cpu" else f"cpu, torch threads {args.torch_threads}"
        for name, conv in (("random", random_conv), ("identity: a class per pixel", identity)):
            t = interleaved({k: predict(conv, k) for k in (1, n)}, args.rounds)
            rows.append((f"predict_raster, 1x1 conv {name} ({where})", t[1], t[n]))
    lines = [
        f"GDAL worker threads, 1 against {n}: {args.size}^2 4-band uint8 deflate input, "
        f"tiles {TILE}/{OVERLAP}, bands of {BLOCK}; medians of {args.rounds} interleaved rounds "
        "after one warm-up each; speed-up = median of per-round time ratios.",
        "",
        f"| step | MP/s, 1 thread | MP/s, {n} threads | speed-up |",
        "|---|---:|---:|---:|",
    ]
    for name, one, many in rows:
        ratio = statistics.median(a / b for a, b in zip(one, many, strict=True))
        lines.append(
            f"| {name} | {mp / statistics.median(one):.1f} | "
            f"{mp / statistics.median(many):.1f} | {ratio:.2f}x |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
