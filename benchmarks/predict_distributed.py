"""Prediction on 2 CPU processes (1 thread each, gloo) vs 1 process (2 threads), same files.

Writes ``--files`` small GeoTIFFs and one large one (split in row blocks across the two
processes), then runs `polyhead.inference.predict_files` with a random-init U-Net (resnet18)
in a fresh Python process per run, the two variants interleaved (their order alternating per
repetition). Reports the median wall time of each command (process start, imports and all)
and of `predict_files` itself, their ratio, and whether the outputs are identical (class maps
exactly; probabilities: largest absolute difference). Writes a markdown table.

    uv run --no-sync python benchmarks/predict_distributed.py [--reps 3] \\
        [--out benchmarks/results/predict_distributed_cpu.md]
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

VARIANTS = {"1 process x 2 threads": (1, 2), "2 processes x 1 thread": (2, 1)}
TILE, OVERLAP, CLASSES = 256, 32, 4


def _model():
    import segmentation_models_pytorch as smp
    import torch

    torch.manual_seed(0)
    return smp.Unet("resnet18", encoder_weights=None, in_channels=3, classes=CLASSES)


def worker(args: argparse.Namespace) -> None:
    """One run (started again by Lightning Fabric on the second process)."""
    import torch

    from polyhead.inference.predict import predict_files

    torch.set_num_threads(args.threads)
    inputs = sorted(Path(args.inputs).glob("*.tif"))
    start = time.perf_counter()
    written = predict_files(
        _model(),
        inputs,
        args.output,
        tile_size=TILE,
        overlap=OVERLAP,
        batch_size=4,
        progress=False,
        write_probabilities=True,
        devices=args.devices,
        accelerator="cpu",
    )
    seconds = time.perf_counter() - start
    if os.environ.get("LOCAL_RANK", "0") == "0":
        print("RESULT " + json.dumps({"seconds": seconds, "written": [str(p) for p in written]}))


def _write_inputs(folder: Path, n_files: int, small: int, big: tuple[int, int]) -> None:
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(0)
    shapes = [(f"small_{i}", small, small) for i in range(n_files)] + [("large", *big)]
    for name, h, w in shapes:
        data = rng.integers(0, 255, (3, h, w), dtype=np.uint8)
        profile = dict(driver="GTiff", height=h, width=w, count=3, dtype="uint8")
        profile.update(crs="EPSG:32631", transform=from_origin(500000, 4000000, 1, 1), tiled=True)
        with rasterio.open(folder / f"{name}.tif", "w", **profile) as dst:
            dst.write(data)


def _run(script: Path, inputs: Path, output: Path, devices: int, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, str(script), "--worker", "--inputs", str(inputs)]
    cmd += ["--output", str(output), "--devices", str(devices), "--threads", str(threads)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return {"wall": wall, **json.loads(line[len("RESULT ") :])}


def _compare(a: list[str], b: list[str]) -> tuple[bool, float]:
    """Class maps equal? Largest probability difference."""
    import rasterio

    same, worst = True, 0.0
    for pa, pb in zip(a, b, strict=True):
        with rasterio.open(pa) as ra, rasterio.open(pb) as rb:
            same &= bool(np.array_equal(ra.read(), rb.read()))
        qa, qb = (p.replace("_classes.", "_proba.") for p in (pa, pb))
        with rasterio.open(qa) as ra, rasterio.open(qb) as rb:
            worst = max(worst, float(np.nanmax(np.abs(ra.read() - rb.read()))))
    return same, worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--files", type=int, default=2, help="small rasters besides the large one")
    ap.add_argument("--small", type=int, default=512, help="small rasters' side (px)")
    ap.add_argument("--big", type=int, nargs=2, default=(1024, 1024), metavar=("H", "W"))
    ap.add_argument("--out", default="benchmarks/results/predict_distributed_cpu.md")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--inputs", help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    ap.add_argument("--devices", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    script = Path(__file__).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "in"
        inputs.mkdir()
        _write_inputs(inputs, args.files, args.small, tuple(args.big))
        runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
        for rep in range(args.reps):
            order = list(VARIANTS) if rep % 2 == 0 else list(VARIANTS)[::-1]
            for name in order:
                devices, threads = VARIANTS[name]
                out = Path(tmp) / f"out-{rep}-{devices}"
                runs[name].append(_run(script, inputs, out, devices, threads))
                print(f"rep {rep} {name}: {runs[name][-1]['wall']:.1f} s", flush=True)
        one, two = (runs[name][-1]["written"] for name in VARIANTS)
        same, worst = _compare(one, two)
    _report(args, runs, same, worst)


def _report(args: argparse.Namespace, runs: dict, same: bool, worst: float) -> None:
    wall = {n: statistics.median(r["wall"] for r in rs) for n, rs in runs.items()}
    pred = {n: statistics.median(r["seconds"] for r in rs) for n, rs in runs.items()}
    one, two = VARIANTS
    big_h, big_w = args.big
    lines = [
        "# Prediction on 2 CPU processes vs 1 (polyhead predict --devices 2 --accelerator cpu)",
        "",
        f"Inputs: {args.files} rasters of {args.small}x{args.small} px and one of {big_h}x{big_w}"
        f" px (split in 2 row blocks), 3 bands; U-Net resnet18 (random init), {CLASSES} classes,"
        f" tile {TILE}, overlap {OVERLAP}, batch 4, probabilities written. {args.reps} "
        "repetitions per variant, interleaved (order alternating); medians. Machine shared "
        "(2 cores): compare the ratios, not the seconds.",
        "",
        "| variant | command wall s | predict_files s |",
        "|---|---:|---:|",
        *(f"| {n} | {wall[n]:.1f} | {pred[n]:.1f} |" for n in VARIANTS),
        f"| ratio (2 processes / 1 process) | {wall[two] / wall[one]:.2f} | "
        f"{pred[two] / pred[one]:.2f} |",
        "",
        f"Identity: class maps equal: {'yes' if same else 'NO'}; largest probability "
        f"difference: {worst:.2e}.",
        "",
        f"Command: `uv run --no-sync python benchmarks/predict_distributed.py --reps {args.reps}"
        f" --files {args.files} --small {args.small} --big {big_h} {big_w}`",
        "",
    ]
    from polyhead.io import write_text

    write_text(args.out, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
