"""What GDAL worker threads (``predict --io-threads``) buy: reads of a compressed input,
writes of class maps, and predict_raster itself, at 1 thread against N.

Writes, in a temp folder, a deflate-compressed 4-band uint8 GeoTIFF (tiled 512, the blocks
plus noise scene of `sliding_window.write_raster`) and measures, the variants interleaved
round by round after one warm-up each (medians; ratios are medians of per-round ratios):

  1. read: every window predict_raster reads (one strip per band), as MP/s of the raster;
  2. write, with polyhead's profile (tiled 256, deflate): uint8 class maps of three kinds,
     ``noise`` (a class per pixel, the worst case), ``blocky`` (noise upsampled 4x, like a
     decoder at 1/4 resolution) and ``smooth`` (large regions), and 6-class probabilities
     (float32 and uint8); then each at GDAL's default deflate level 6 against polyhead's;
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
from polyhead.inference.raster_inputs import gdal_env
from polyhead.inference.tiling import band_layout, tile_starts
from polyhead.io import DEFLATE_LEVEL, geotiff_profile

TILE, OVERLAP, BLOCK = 512, 64, 4096


def class_maps(size: int) -> dict[str, np.ndarray]:
    """One strip (512 rows) of each kind of output map, repeated down the raster."""
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 6, (1, 512, size), dtype=np.uint8)
    coarse = rng.integers(0, 6, (1, 128, size // 4), dtype=np.uint8)
    blocky = np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2)
    rows, cols = np.arange(512)[:, None], np.arange(size)[None]
    smooth = ((cols // 97 + rows // 89) % 6).astype(np.uint8)[None]
    logits = torch.randn(1, 6, 512 // 16, size // 16, generator=torch.Generator().manual_seed(0))
    up = torch.nn.functional.interpolate(logits * 3, size=(512, size), mode="bilinear")
    proba = torch.softmax(up, 1)[0].numpy()
    return {
        "class map, noise": noise,
        "class map, blocky": blocky,
        "class map, smooth": smooth,
        "probabilities, float32 x 6": proba,
        "probabilities, uint8 x 6": np.rint(proba * 255).astype(np.uint8),
    }


def read_run(path: Path, threads: int) -> None:
    with gdal_env(threads), rasterio.open(path) as src:
        ys = tile_starts(src.height, TILE, OVERLAP)
        for _, _, xs in band_layout(src.width, TILE, OVERLAP, BLOCK):
            for y0 in ys:
                src.read(window=Window(xs[0], y0, xs[-1] + TILE - xs[0], TILE))


def write_run(out: Path, strip: np.ndarray, size: int, threads: int, zlevel: int) -> int:
    """Write ``strip`` down a ``size``-square file in 512-row windows; the file's bytes."""
    profile = geotiff_profile(size, size, strip.shape[0], strip.dtype.name)
    profile["zlevel"] = zlevel
    with gdal_env(threads), rasterio.open(out, "w", **profile) as dst:
        for row in range(0, size, 512):
            h = min(512, size - row)
            dst.write(strip[:, :h], window=Window(0, row, size, h))
    return out.stat().st_size


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
        levels = []
        for kind, strip in class_maps(args.size).items():
            runs = {
                k: (lambda k=k, s=strip: write_run(out, s, args.size, k, DEFLATE_LEVEL))
                for k in (1, n)
            }
            t = interleaved(runs, args.rounds)
            rows.append((f"write {kind}", t[1], t[n]))
            runs = {
                z: (lambda z=z, s=strip: write_run(out, s, args.size, 1, z))
                for z in (6, DEFLATE_LEVEL)
            }
            t = interleaved(runs, args.rounds)
            sizes = {z: write_run(out, strip, args.size, 1, z) for z in (6, DEFLATE_LEVEL)}
            levels.append(
                (f"write {kind}", t[6], t[DEFLATE_LEVEL], sizes[DEFLATE_LEVEL] / sizes[6])
            )
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
    lines += [
        "",
        f"Deflate level: GDAL's default 6 against polyhead's {DEFLATE_LEVEL} (1 GDAL thread).",
        "",
        f"| step | MP/s, level 6 | MP/s, level {DEFLATE_LEVEL} | speed-up | file size ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, six, one, size_ratio in levels:
        ratio = statistics.median(a / b for a, b in zip(six, one, strict=True))
        lines.append(
            f"| {name} | {mp / statistics.median(six):.1f} | {mp / statistics.median(one):.1f} "
            f"| {ratio:.2f}x | {size_ratio:.2f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
