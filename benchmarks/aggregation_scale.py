"""Scale benchmark of `polyhead.aggregation.aggregate_masks`.

Writes 100 masks of 512 x 512 from 3 simulated annotators with 6 classes (about
79 M annotations) as uint8 GeoTIFFs under a temporary folder, then times
``aggregate_masks`` (Dawid-Skene, default options) in a fresh subprocess and reports
its wall time and peak RSS (``resource.getrusage(RUSAGE_CHILDREN)``, which covers
the whole child: interpreter, imports, data). The target is < 60 s and < 2 GiB.

    uv run python benchmarks/aggregation_scale.py [--images 100] [--size 512] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import Affine

CHILD = """
import json, sys, time
t0 = time.perf_counter()
from polyhead.aggregation import aggregate_masks
t1 = time.perf_counter()
r = aggregate_masks(sys.argv[1], sys.argv[2], int(sys.argv[3]), progress=False)
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "aggregate_s": t2 - t1, "n_iter": r.n_iter,
                  "converged": r.converged, "n_patterns": r.n_patterns,
                  "labelled": r.n_labelled, "confusion": r.confusion.tolist()}))
"""


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="polyhead-agg-scale-") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        csv_path = write_dataset(root / "data", args.images, args.size, args.classes)
        n_ann = args.images * args.size * args.size * 3
        print(
            f"wrote {args.images} x 3 masks of {args.size}^2 ({n_ann / 1e6:.1f} M annotations) "
            f"in {time.perf_counter() - t:.1f} s"
        )
        for rep in range(args.repeat):
            out = root / f"out{rep}"
            t = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-c", CHILD, str(csv_path), str(out), str(args.classes)],
                capture_output=True,
                text=True,
                check=True,
            )
            wall = time.perf_counter() - t
            info = json.loads(proc.stdout.strip().splitlines()[-1])
            # children's max RSS so far: each run is the same size, so this is the run's peak
            peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
            size_mib = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
            print(
                f"run {rep}: aggregate_masks {info['aggregate_s']:.1f} s (subprocess wall "
                f"{wall:.1f} s, imports {info['import_s']:.1f} s), peak RSS {peak_mib:.0f} MiB, "
                f"{info['n_iter']} EM iterations (converged={info['converged']}), "
                f"{info['n_patterns']} label patterns, {info['labelled'] / 1e6:.1f} M labelled "
                f"pixels, outputs {size_mib:.0f} MiB"
            )


if __name__ == "__main__":
    main()
