"""Crop-reading throughput from a large GeoTIFF: windowed reads vs reading the whole file.

Writes an N x N, 4-band uint8 GeoTIFF (tiled 512 x 512, as imagery usually is), then
interleaves, round after round:
  - ``window``:  ``read_window`` of one random crop (what the dataset does per sample),
  - ``dataset``: ``RandomCropSegmentationDataset[i]`` (image + mask crop, to float tensors),
  - ``whole``:   read the whole raster, then slice the crop (what a naive loader does).
Peak memory of each variant is measured in a fresh subprocess (peak RSS minus the RSS after
imports), since GDAL's allocations are invisible to tracemalloc.

    uv run python benchmarks/crop_read.py --size 8000 --crop 512
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin


def write_raster(folder: Path, size: int) -> Path:
    image, mask = folder / "big.tif", folder / "big_mask.tif"
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        dtype="uint8",
        crs="EPSG:32633",
        transform=from_origin(500000, 5000000, 10, 10),
        tiled=True,
        blockxsize=512,
        blockysize=512,
    )
    rng = np.random.default_rng(0)
    with (
        rasterio.open(image, "w", count=4, **profile) as dst,
        rasterio.open(mask, "w", count=1, **profile) as mdst,
    ):
        for row in range(0, size, 512):
            h = min(512, size - row)
            win = rasterio.windows.Window(0, row, size, h)
            dst.write(rng.integers(0, 255, (4, h, size), dtype=np.uint8), window=win)
            mdst.write(rng.integers(0, 4, (1, h, size), dtype=np.uint8), window=win)
    (folder / "data.csv").write_text("image,mask\nbig.tif,big_mask.tif\n")
    return image


def _rss_mib() -> float:
    """Peak RSS of this process image (VmHWM; ru_maxrss would carry the parent's peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_variant(name: str, folder: Path, crop: int, n: int) -> None:
    """Child process: report peak RSS growth of ``n`` crops of one variant as JSON."""
    from polyhead.data import RandomCropSegmentationDataset
    from polyhead.data.raster_io import HandleCache, read_window

    path = folder / "big.tif"
    with rasterio.open(path) as src:
        size = src.height
    ds = RandomCropSegmentationDataset(
        folder / "data.csv", crop, 4, samples_per_epoch=n, validate=False
    )
    cache = HandleCache()
    rng = np.random.default_rng(1)
    base = _rss_mib()
    for i in range(n):
        r, c = rng.integers(0, size - crop, 2)
        if name == "window":
            read_window(path, int(r), int(c), crop, crop, cache)
        elif name == "dataset":
            ds[i]
        else:
            with rasterio.open(path) as src:
                src.read()[:, r : r + crop, c : c + crop].copy()
    print(json.dumps({"peak_mib": _rss_mib() - base}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=8000)
    ap.add_argument("--crop", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--crops", type=int, default=200, help="crops per peak-memory child")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        run_variant(
            args.child, Path(args.folder), args.crop, args.crops if args.child != "whole" else 2
        )
        return

    from polyhead.data import RandomCropSegmentationDataset
    from polyhead.data.raster_io import HandleCache, read_window

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        path = write_raster(folder, args.size)
        print(
            f"wrote {args.size}x{args.size}x4 uint8 GeoTIFF ({path.stat().st_size / 2**20:.0f} MiB) "
            f"in {time.perf_counter() - t0:.1f} s"
        )
        ds = RandomCropSegmentationDataset(
            folder / "data.csv", args.crop, 4, samples_per_epoch=10**6, validate=False
        )
        cache = HandleCache()
        rng = np.random.default_rng(0)
        times: dict[str, list[float]] = {"window": [], "dataset": [], "whole": []}
        for _ in range(args.rounds):
            for _ in range(10):  # 10 windowed crops per whole-file read keeps the run short
                r, c = (int(v) for v in rng.integers(0, args.size - args.crop, 2))
                t = time.perf_counter()
                read_window(path, r, c, args.crop, args.crop, cache)
                times["window"].append(time.perf_counter() - t)
                t = time.perf_counter()
                ds[0]
                times["dataset"].append(time.perf_counter() - t)
            r, c = (int(v) for v in rng.integers(0, args.size - args.crop, 2))
            t = time.perf_counter()
            with rasterio.open(path) as src:
                src.read()[:, r : r + args.crop, c : c + args.crop].copy()
            times["whole"].append(time.perf_counter() - t)
        med = {k: statistics.median(v) for k, v in times.items()}
        mpix = args.crop * args.crop / 1e6
        print(
            f"crop {args.crop}x{args.crop}x4 from {args.size}x{args.size}, {args.rounds} rounds "
            "(interleaved)"
        )
        for k, v in med.items():
            print(f"  {k:8s} median {v * 1000:9.2f} ms/crop  {mpix / v:8.1f} Mpx/s")
        print(f"ratio whole/window  = {med['whole'] / med['window']:.0f}x")
        print(
            f"ratio dataset/window = {med['dataset'] / med['window']:.2f} "
            "(dataset overhead: mask read, float conversion, tensors)"
        )
        for name in ("window", "dataset", "whole"):
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    name,
                    "--folder",
                    tmp,
                    "--crop",
                    str(args.crop),
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            peak = json.loads(out.strip().splitlines()[-1])["peak_mib"]
            print(f"  {name:8s} peak RSS growth {peak:8.1f} MiB")


if __name__ == "__main__":
    main()
