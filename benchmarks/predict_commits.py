"""predict_raster with a 1x1 conv, two source trees side by side (a change's before/after).

Writes a 4-band uint8 GeoTIFF (``--size`` squared, uncompressed, tiled 512) once, then runs
``predict_raster`` (tiles 512, overlap 64, batch 4, one torch thread) in fresh subprocesses,
alternating the trees round by round (the machine is shared); each subprocess reports the
median of ``--runs`` runs after a warm-up. Prints each tree's seconds and the median of the
per-round time ratios after / before.

    git archive <commit> src/polyhead | tar -x -C /tmp/before
    uv run --no-sync python benchmarks/predict_commits.py --before /tmp/before/src --after src
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from sliding_window import write_raster  # benchmarks/ (this script's folder) is on sys.path

RUN = """
import statistics, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
if sys.argv[3] == "cli":
    from polyhead.allocator import keep_freed_memory
    keep_freed_memory()
from polyhead.inference import predict_raster
src, out, runs = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[4])
torch.manual_seed(0)
conv = torch.nn.Conv2d(4, 4, 1)
def run():
    predict_raster(conv, src, out, tile_size=512, overlap=64, batch_size=4, progress=False,
                   write_probabilities=sys.argv[5] == "1")
run()
times = []
for _ in range(runs):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
print(statistics.median(times))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="a src/ folder")
    parser.add_argument("--after", type=Path, required=True, help="a src/ folder")
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3, help="runs per subprocess")
    parser.add_argument("--probabilities", action="store_true", help="float32 probabilities too")
    parser.add_argument(
        "--cli-allocator", action="store_true", help="glibc thresholds as `polyhead` sets them"
    )
    args = parser.parse_args()
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    times: dict[str, list[float]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory() as tmp:
        src = write_raster(Path(tmp) / "in.tif", args.size)
        for _ in range(args.rounds):
            for name, tree in trees.items():
                env = {**os.environ, "PYTHONPATH": str(tree)}
                cmd = [sys.executable, "-W", "ignore", "-c", RUN, str(src), f"{tmp}/{name}.tif"]
                cmd += ["cli" if args.cli_allocator else "default", str(args.runs)]
                cmd.append("1" if args.probabilities else "0")
                done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
                times[name].append(float(done.stdout.strip().splitlines()[-1]))
    for name, values in times.items():
        print(f"{name}: {[round(v, 3) for v in values]} s")
    ratio = statistics.median(a / b for a, b in zip(times["after"], times["before"], strict=True))
    print(f"after / before: {ratio:.3f}x the time")


if __name__ == "__main__":
    main()
