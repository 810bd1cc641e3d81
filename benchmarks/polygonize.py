"""Polygonisation speed and peak memory: block-streamed vs the whole class map in one block.

Writes a synthetic class map (default 8192 x 8192, 5 classes: quantised sums of smooth random
fields, a few thousand polygons; 1 % nodata in a band across the image) once, then
polygonises it with `polyhead.inference.vector.polygonize_raster` at each block size, every
run in its own subprocess so its peak resident memory (VmHWM) is its own. The block sizes run
interleaved in each round (the machine is shared). Writes benchmarks/results/polygonize_cpu.md
with the median MP/s, the median VmHWM, the VmRSS after imports (torch comes with
``polyhead.inference``) and the polygon counts.

    uv run --no-sync python benchmarks/polygonize.py [--size 8192] [--blocks 2048,8192] [--reps 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import Affine
from scipy import ndimage

from polyhead.demo.scenes import smooth_field
from polyhead.io import write_text

RUN = """
import json, sys, time
def rss(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
from polyhead.inference.vector import polygonize_raster
base = rss('VmRSS:')
r = polygonize_raster(sys.argv[1], sys.argv[2], block_size=int(sys.argv[3]))
print(json.dumps({"s": r.seconds, "n": r.n_polygons, "merged": r.n_merged,
                  "hwm": rss('VmHWM:'), "base": base}))
"""


def class_map(size: int, seed: int = 0) -> np.ndarray:
    """A 5-class map: smooth fields made at 1/8 and 1/4 size, upsampled bilinearly, quantised."""
    rng = np.random.default_rng(seed)
    coarse = ndimage.zoom(smooth_field(rng, (size // 8, size // 8), 3.0), 8, order=1)
    fine = ndimage.zoom(smooth_field(rng, (size // 4, size // 4), 2.0), 4, order=1)
    field = (coarse + 0.35 * fine).astype(np.float32)
    del coarse, fine
    edges = np.quantile(field[::16, ::16], [0.2, 0.4, 0.6, 0.8])
    out = np.digitize(field, edges).astype(np.uint8)
    band = size // 2
    out[band : band + max(1, size // 100), :] = 255  # nodata stripe
    return out


def write_map(path: Path, data: np.ndarray) -> None:
    profile = dict(
        driver="GTiff", height=data.shape[0], width=data.shape[1], count=1, dtype="uint8",
        crs="EPSG:32633", transform=Affine(0.5, 0, 4e5, 0, -0.5, 5e6), nodata=255,
        tiled=True, blockxsize=512, blockysize=512, compress="deflate",
    )  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)


def run(src: Path, out: Path, block: int) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", RUN, str(src), str(out), str(block)],
        check=True,
        capture_output=True,
        text=True,
    )
    out.unlink()
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--blocks", default="2048,8192", help="block sizes (>= size: one block)")
    ap.add_argument("--reps", type=int, default=2, help="interleaved rounds")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/polygonize_cpu.md"))
    args = ap.parse_args()
    blocks = [int(b) for b in args.blocks.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "classes.tif"
        write_map(src, class_map(args.size))
        results: dict[int, list[dict]] = {b: [] for b in blocks}
        for rep in range(args.reps):
            for b in blocks:
                results[b].append(run(src, Path(tmp) / f"v{b}.gpkg", b))
                print(f"round {rep} block {b}: {results[b][-1]}", flush=True)
    mp = args.size * args.size / 1e6
    rows = []
    for b in blocks:
        r = results[b]
        s = statistics.median(x["s"] for x in r)
        hwm = statistics.median(x["hwm"] for x in r)
        base = statistics.median(x["base"] for x in r)
        name = "whole image (one block)" if b >= args.size else f"{b} x {b}"
        rows.append(
            f"| {name} | {mp / s:.2f} | {s:.1f} | {hwm:.0f} | {base:.0f} | {hwm - base:.0f} | "
            f"{r[0]['n']} | {r[0]['merged']} |"
        )
    text = "\n".join(
        [
            "# Polygonisation of a class map (CPU)",
            "",
            f"Synthetic {args.size} x {args.size} uint8 class map (5 classes, 1 % nodata), "
            f"GeoPackage output; median of {args.reps} interleaved rounds, each run in its own "
            "subprocess. VmHWM: peak resident memory of the run; after imports: VmRSS once "
            "polyhead.inference (with torch) is imported.",
            "",
            "| blocks | MP/s | s | VmHWM MiB | after imports MiB | peak - imports MiB "
            "| polygons | merged across blocks |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            "Command: `uv run --no-sync python benchmarks/polygonize.py "
            f"--size {args.size} --blocks {args.blocks} --reps {args.reps}`",
            "",
        ]
    )
    write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
