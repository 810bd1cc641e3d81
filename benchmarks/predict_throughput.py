"""predict_raster throughput on the CPU against its ceilings, and its peak memory by size.

Runs `gpu_predict.py`'s measurements on the CPU (1x1-conv predict vs the read + write floor
on a 4096^2 raster; the ResNet-34 dual-head UPerNet's predict vs its own forward on a
1536^2 raster; variants interleaved, >= 3 rounds after a warm-up), then the peak memory
(VmHWM of a fresh process) of `benchmarks/sliding_window.py` at 2048^2 and 8192^2, and
writes both tables to --out.

    uv run --no-sync python benchmarks/predict_throughput.py        # ~10 min on 2 shared cores
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "results/predict_throughput_cpu.md")
    parser.add_argument("--conv-size", type=int, default=4096)
    parser.add_argument("--real-size", type=int, default=1536)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-sizes", type=int, nargs="*", default=[2048, 8192])
    args = parser.parse_args()
    tmp = args.out.with_suffix(".throughput.tmp")
    subprocess.run(
        [sys.executable, str(HERE / "gpu_predict.py"), "--device", "cpu", "--out", str(tmp),
         "--conv-size", str(args.conv_size), "--real-size", str(args.real_size),
         "--rounds", str(args.rounds), "--threads", str(args.threads)],
        check=True,
    )  # fmt: skip
    text = tmp.read_text()
    tmp.unlink()
    if args.memory_sizes:
        memory = subprocess.run(
            [sys.executable, str(HERE / "sliding_window.py"), "--tta-rounds", "0",
             "--real-sizes", "--sizes", *map(str, args.memory_sizes),
             "--threads", str(args.threads)],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        text += "\nPeak memory (benchmarks/sliding_window.py, tiny conv model, class map only):\n\n"
        text += "```\n" + memory + "```\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
