"""CPU prediction with and without `polyhead.allocator.keep_freed_memory`, side by side.

Each round runs two fresh processes, one per mode (glibc's defaults, then the raised mmap and
trim thresholds that ``polyhead``'s command line sets), interleaved round by round. Each
process writes a 4-band uint8 GeoTIFF and times `predict_raster` (after one warm-up run),
reporting the median of its runs:
  - a ResNet-18 dual-head UPerNet (random init) on a 1024^2 raster, 2 torch threads;
  - a 1x1 conv 4 -> 4 on a 4096^2 raster, 1 torch thread;
and its peak resident memory (VmHWM). Writes benchmarks/results/allocator_cpu.md.

    uv run --no-sync python benchmarks/allocator.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from polyhead.io import write_text

RUN = r"""
import json, statistics, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, sys.argv[2])
import torch
from polyhead.allocator import keep_freed_memory
if sys.argv[1] == "tuned":
    assert keep_freed_memory()
from sliding_window import write_raster
from polyhead.inference import predict_raster
from polyhead.models import UPerNetDualHead

def timed(model, path, out, threads):
    torch.set_num_threads(threads)
    run = lambda: predict_raster(model, path, out, tile_size=512, overlap=64, batch_size=4,
                                 progress=False)
    run()
    times = []
    for _ in range(2):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)

tmp = Path(tempfile.mkdtemp())
torch.manual_seed(0)
real = UPerNetDualHead(encoder_name="resnet18", encoder_weights=None, in_channels=4, classes=6)
result = {
    "real": timed(real.eval(), write_raster(tmp / "r.tif", 1024), tmp / "r_out.tif", 2),
    "conv": timed(torch.nn.Conv2d(4, 4, 1), write_raster(tmp / "c.tif", 4096), tmp / "c_out.tif", 1),
}
for line in open("/proc/self/status"):
    if line.startswith("VmHWM"):
        result["hwm_mib"] = int(line.split()[1]) / 1024
print(json.dumps(result))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/allocator_cpu.md"))
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    here = str(Path(__file__).resolve().parent)
    runs: dict[str, list[dict]] = {"plain": [], "tuned": []}
    for _ in range(args.rounds):
        for mode in runs:
            out = subprocess.run(
                [sys.executable, "-W", "ignore", "-c", RUN, mode, here],
                capture_output=True, text=True, env=env, check=True,
            )  # fmt: skip
            runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(mode, runs[mode][-1], flush=True)
    rows = []
    for key, label in (("real", "ResNet-18 dual UPerNet, 1024^2, 2 threads"),
                       ("conv", "1x1 conv, 4096^2, 1 thread")):  # fmt: skip
        plain = [r[key] for r in runs["plain"]]
        tuned = [r[key] for r in runs["tuned"]]
        ratio = statistics.median(t / p for t, p in zip(tuned, plain, strict=True))
        rows.append(
            f"| {label} | {statistics.median(plain):.2f} | {statistics.median(tuned):.2f} "
            f"| {ratio:.2f} |"
        )
    hwm = {m: statistics.median(r["hwm_mib"] for r in v) for m, v in runs.items()}
    text = "\n".join(
        [
            "# CPU prediction with the command line's allocator setting (`polyhead.allocator`)",
            "",
            f"Shared 2-core machine; {args.rounds} rounds, the two modes interleaved, each a "
            "fresh process; seconds are medians of 2 runs after a warm-up.",
            "",
            "| predict_raster | glibc defaults s | raised thresholds s | time ratio |",
            "|---|---:|---:|---:|",
            *rows,
            "",
            f"Peak resident memory (VmHWM) of the whole process: {hwm['plain']:.0f} MiB with "
            f"glibc's defaults, {hwm['tuned']:.0f} MiB with the raised thresholds.",
            "",
            f"Command: `uv run --no-sync python benchmarks/allocator.py --rounds {args.rounds}`",
            "",
        ]
    )
    print(text)
    write_text(args.out, text)


if __name__ == "__main__":
    main()
