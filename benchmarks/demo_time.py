"""Wall time of the default ``polyhead demo`` on this machine, quiet and busy, interleaved.

Each repetition runs ``polyhead demo`` (a fresh process, CLI start-up included) once as the
machine is, then once beside a CPU burner (a 2-thread torch matmul loop) started just before
and killed just after, then once more as the machine is: quiet, busy, quiet, ... Writes a
markdown table with the wall time, the demo's own stage times, the CPU time of the demo
process, the 1-minute load average at start and the average head's mIoU against the truth.

    uv run --no-sync python benchmarks/demo_time.py --reps 1
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BURNER = "import torch; torch.set_num_threads(2); x = torch.randn(2000, 2000)\nwhile True: x @ x"


def run_demo(out: Path, extra: list[str]) -> dict[str, str]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "polyhead", "demo", "--out", str(out), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "COLUMNS": "80"})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"demo failed:\n{done.stderr[-2000:]}")
    text = done.stdout
    miou = re.search(r"│ average\s*│\s*([0-9]+\.\d+)", text)
    stages = re.search(r"done in \d+ s \((.*?)\)", text, re.S)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "wall s": f"{wall:.0f}",
        "CPU s": f"{cpu:.0f}",
        "load at start": f"{load:.1f}",
        "mIoU vs truth (average)": miou[1] if miou else "?",
        "stages": " ".join(stages[1].split()) if stages else "?",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=1, help="quiet-busy pairs (then one quiet)")
    parser.add_argument("--out", default="benchmarks/results/demo_time.md")
    parser.add_argument("demo_args", nargs="*", help="extra polyhead demo arguments")
    args = parser.parse_args()
    rows = []
    plan = [c for _ in range(args.reps) for c in ("quiet", "busy")] + ["quiet"]
    for i, condition in enumerate(plan):
        tmp = Path(tempfile.mkdtemp(prefix="demo-time-"))
        burner = None
        if condition == "busy":
            burner = subprocess.Popen([sys.executable, "-c", BURNER])
            time.sleep(3)  # let it start computing
        try:
            row = run_demo(tmp / "demo", args.demo_args)
        finally:
            if burner is not None:
                burner.kill()
                burner.wait()
            shutil.rmtree(tmp, ignore_errors=True)
        rows.append({"run": str(i + 1), "condition": condition, **row})
        print(rows[-1], flush=True)
    cols = list(rows[0])
    lines = [
        f"# polyhead demo wall time ({' '.join(args.demo_args) or 'defaults'})",
        "",
        f"{len(rows)} runs interleaved (quiet, busy, ...); busy = beside a 2-thread torch matmul "
        "burner; 'quiet' is the machine as it was (other users' jobs included: see the load). "
        f"{os.cpu_count()} CPUs.",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
        *("| " + " | ".join(r[c] for c in cols) + " |" for r in rows),
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
