"""``predict --vector``'s polygonising in worker processes while the next files are predicted.

A GPU predicts class maps faster than one process polygonises them (7-10 MP/s,
`polygonize_cpu.md`). This stands in for the GPU with a sleep per file (the predicting
process mostly waits on the device) and polygonises synthetic class maps (`polygonize.py`'s
5-class map) with `polyhead.inference.vector_jobs.VectorJobs`: at once after each file
(0 workers, as before), or queued to 1 or 2 spawned workers. Rounds interleave the worker
counts; prints the median seconds and the median ratio to 0 workers.

    uv run --no-sync python benchmarks/vector_workers.py [--files 8] [--size 4096] [--predict-s 1.0]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from polygonize import class_map, write_map  # benchmarks/ (this script's folder) is on sys.path

from polyhead.inference.vector_jobs import VectorJobs, polygonize_beside


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--predict-s", type=float, default=1.0, help="the GPU's time per file")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        maps = []
        for i in range(args.files):
            maps.append(Path(tmp) / f"m{i}_classes.tif")
            write_map(maps[-1], class_map(args.size, seed=i))
        start = time.perf_counter()
        polygonize_beside(maps[0])
        print(f"one {args.size}^2 map polygonised in {time.perf_counter() - start:.2f} s")
        times: dict[int, list[float]] = {w: [] for w in args.workers}
        for _ in range(args.rounds):
            for workers in args.workers:
                start = time.perf_counter()
                with VectorJobs(polygonize_beside, workers) as jobs:
                    for m in maps:
                        time.sleep(args.predict_s)  # the device predicts the next file
                        jobs(m)
                    jobs.wait()
                times[workers].append(time.perf_counter() - start)
    base = times[args.workers[0]]
    print(f"{args.files} files of {args.size}^2, {args.predict_s} s of prediction each:")
    for workers, values in times.items():
        ratio = statistics.median(v / b for v, b in zip(values, base, strict=True))
        print(f"  {workers} workers: {statistics.median(values):.2f} s, {ratio:.2f}x")


if __name__ == "__main__":
    main()
