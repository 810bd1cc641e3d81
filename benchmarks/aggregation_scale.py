"""Scale benchmark of ``polyhead aggregate`` on masks, end to end through the CLI.

Writes ``N`` masks of 512 x 512 from 3 simulated annotators with 6 classes (100 images:
about 79 M annotations) as deflate uint8 GeoTIFFs under a temporary folder, then runs,
interleaved in every repetition, each variant as a fresh subprocess (process start,
imports, CSV checks, both passes, EM, figures):

* ``floor``: a script that only reads every mask once and writes the same soft (6-band
  float32, zstd) and hard (uint8, deflate) GeoTIFFs (no fsync, no checks): the physical
  floor of reading and writing the rasters;
* ``cli``: ``polyhead aggregate CSV --out D --n-classes 6 --no-progress`` (float32 soft);
* ``cli-uint8``: the same with ``--soft-dtype uint8``;
* ``cli-1thread``: ``--workers 1``;
* ``dask-local2``: ``--scheduler local:2`` (a LocalCluster of 2 worker processes);
* ``baseline``: ``cli`` with another polyhead source tree first on ``PYTHONPATH``
  (``--baseline-src``, e.g. ``git archive <commit> src/polyhead | tar -x -C /tmp/old`` and
  ``--baseline-src /tmp/old/src``): before/after, side by side.

Wall time is the subprocess's; CPU time (user + system) and peak RSS are that process's
own, from ``os.wait4`` (for ``dask-local2`` the workers are other processes: their CPU and
memory are not included). On a shared, loaded machine wall time follows the load; CPU time
much less so.
Results (median over ``--repeat``, ratio to ``cli``) go to
``benchmarks/results/aggregation_scale.md``.

    uv run --no-sync python benchmarks/aggregation_scale.py [--images 100 200] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import Affine

FLOOR = """
import sys, csv
from pathlib import Path
import numpy as np
import rasterio
rows = list(csv.DictReader(open(sys.argv[1])))
out = Path(sys.argv[2]); out.mkdir(parents=True)
by_image = {}
for r in rows:
    by_image.setdefault(r["image"], []).append(Path(sys.argv[1]).parent / r["mask"])
for i, (image, masks) in enumerate(by_image.items()):
    arrays = []
    for m in masks:
        with rasterio.open(m) as src:
            arrays.append(src.read(1))
            profile = src.profile
    h, w = arrays[0].shape
    soft = np.broadcast_to((arrays[0] / 6.0).astype(np.float32), (6, h, w))
    base = dict(driver="GTiff", height=h, width=w, crs=profile["crs"],
                transform=profile["transform"], tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(out / f"s{i}.tif", "w", count=6, dtype="float32", compress="zstd",
                       zstd_level=1, **base) as dst:
        dst.write(soft)
    with rasterio.open(out / f"h{i}.tif", "w", count=1, dtype="uint8", compress="deflate",
                       zlevel=1, **base) as dst:
        dst.write(arrays[0][None])
"""

CLI = "import sys; from polyhead.cli import main; sys.exit(main())"

VARIANTS = {
    "floor": [],
    "cli": [],
    "cli-uint8": ["--soft-dtype", "uint8"],
    "cli-1thread": ["--workers", "1"],
    "dask-local2": ["--scheduler", "local:2"],
    "baseline": [],
}


def confusion_for(rng: np.random.Generator, k: int, accuracy: float) -> np.ndarray:
    """Row-stochastic confusion with the given diagonal and random off-diagonal mass."""
    off = rng.dirichlet(np.ones(k - 1) * 0.7, size=k) * (1 - accuracy)
    conf = np.zeros((k, k))
    for c in range(k):
        conf[c, np.arange(k) != c] = off[c]
        conf[c, c] = accuracy
    return conf


def sample(rng: np.random.Generator, truth: np.ndarray, conf: np.ndarray) -> np.ndarray:
    """Annotator labels drawn from ``conf[truth]`` pixel by pixel."""
    cum = np.cumsum(conf, axis=1)[truth]
    u = rng.random(truth.shape)[..., None]
    return np.minimum((u > cum).sum(axis=-1), conf.shape[0] - 1).astype(np.uint8)


def write_dataset(root: Path, n_images: int, size: int, k: int, seed: int = 0) -> Path:
    """Write truth-free annotator GeoTIFFs and the ``image,annotator,mask`` CSV."""
    rng = np.random.default_rng(seed)
    names = ("expert", "trained", "novice")
    confs = [confusion_for(rng, k, acc) for acc in (0.9, 0.75, 0.6)]
    rows = ["image,annotator,mask"]
    block = 16
    for i in range(n_images):
        coarse = rng.integers(0, k, (size // block, size // block))
        truth = np.kron(coarse, np.ones((block, block), dtype=np.int64))
        transform = Affine(10.0, 0, 500000.0 + 6000.0 * i, 0, -10.0, 5200000.0)
        for name, conf in zip(names, confs, strict=True):
            path = root / name / f"img_{i:03d}.tif"
            path.parent.mkdir(parents=True, exist_ok=True)
            profile = dict(
                driver="GTiff",
                width=size,
                height=size,
                count=1,
                dtype="uint8",
                crs="EPSG:32633",
                transform=transform,
                compress="deflate",
            )
            with rasterio.open(path, "w", **profile) as dst:
                dst.write(sample(rng, truth, conf)[None])
            rows.append(f"scenes/img_{i:03d}.tif,{name},{name}/img_{i:03d}.tif")
    csv_path = root / "annotators.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    return csv_path


def run_variant(
    name: str, csv_path: Path, out: Path, k: int, baseline_src: str | None = None
) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds (user + system) and peak RSS (MiB) of one variant, run as
    a fresh subprocess."""
    if name == "floor":
        cmd = [sys.executable, "-c", FLOOR, str(csv_path), str(out)]
    else:
        cmd = [sys.executable, "-c", CLI, "aggregate", str(csv_path), "--out", str(out)]
        cmd += ["--n-classes", str(k), "--no-progress", *VARIANTS[name]]
    env = dict(os.environ)
    if name == "baseline":
        if not baseline_src:
            raise SystemExit("variant baseline needs --baseline-src")
        env["PYTHONPATH"] = baseline_src
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    err = proc.stderr.read().decode() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed ({proc.returncode}): {err[-2000:]}")
    shutil.rmtree(out)
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[100])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--variants",
        nargs="+",
        default=[v for v in VARIANTS if v != "baseline"],
        choices=list(VARIANTS),
    )
    parser.add_argument("--baseline-src", help="source folder for the baseline variant")
    parser.add_argument("--out", default="benchmarks/results/aggregation_scale.md")
    args = parser.parse_args()
    lines = [
        "# polyhead aggregate: masks end to end through the CLI",
        "",
        f"{args.size} x {args.size} masks, 3 annotators, {args.classes} classes; each cell: "
        f"median of {args.repeat} runs (variants interleaved in every run), wall seconds of "
        "the whole subprocess, its peak RSS, and the ratio to `cli`. Machine: "
        f"{os.cpu_count()} CPUs (shared; absolute times vary with the load).",
        "",
        "| images | M annotations | variant | wall s | ratio to cli | CPU s | peak RSS MiB |",
        "|---:|---:|---|---:|---:|---:|---:|",
    ]
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="polyhead-agg-scale-") as tmp:
        for n in args.images:
            root = Path(tmp) / f"n{n}"
            csv_path = write_dataset(root / "data", n, args.size, args.classes)
            n_ann = n * args.size * args.size * 3
            times: dict[str, list[float]] = {v: [] for v in args.variants}
            rss: dict[str, list[float]] = {v: [] for v in args.variants}
            cpu: dict[str, list[float]] = {v: [] for v in args.variants}
            for rep in range(args.repeat):
                for v in args.variants:
                    wall, used, peak = run_variant(
                        v, csv_path, root / f"out-{v}", args.classes, args.baseline_src
                    )
                    times[v].append(wall)
                    cpu[v].append(used)
                    rss[v].append(peak)
                    print(
                        f"{n} images, run {rep}: {v} {wall:.2f} s (CPU {used:.2f} s), "
                        f"{peak:.0f} MiB, load {os.getloadavg()[0]:.1f}",
                        flush=True,
                    )
            ref = statistics.median(times["cli"]) if "cli" in times else float("nan")
            for v in args.variants:
                t = statistics.median(times[v])
                lines.append(
                    f"| {n} | {n_ann / 1e6:.1f} | {v} | {t:.2f} | {t / ref:.2f} | "
                    f"{statistics.median(cpu[v]):.2f} | {statistics.median(rss[v]):.0f} |"
                )
            shutil.rmtree(root)
            loads.append(os.getloadavg()[0])
    lines.append("")
    lines.append(f"1-minute load average during the runs: {min(loads):.1f} to {max(loads):.1f}.")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
