"""Cost of answering with one head vs the average of both, on a dual UPerNet (CPU).

The predictor runs only the heads its answer needs: ``head="A"`` runs the encoder and head A,
``"average"`` both decoders. Prints the median time of each, measured interleaved, and the
ratio A / average (the issue measured 0.585 for encoder + head A alone).

    uv run python benchmarks/predict_head_cost.py [--reps 6] [--size 256] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from polyhead.inference import Predictor
from polyhead.models import UPerNetDualHead


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = UPerNetDualHead(encoder_name="resnet18", encoder_weights=None, in_channels=4, classes=4)
    x = torch.randn(args.batch, 4, args.size, args.size)
    predictors = {head: Predictor(model.eval(), head=head) for head in ("A", "average")}
    times: dict[str, list[float]] = {head: [] for head in predictors}
    with torch.inference_mode():
        for p in predictors.values():  # warm-up
            p(x)
        for _ in range(args.reps):
            for head, p in predictors.items():
                start = time.perf_counter()
                p(x)
                times[head].append(time.perf_counter() - start)
    median = {head: statistics.median(t) for head, t in times.items()}
    print(f"median s: A {median['A']:.3f}, average {median['average']:.3f}")
    print(f"ratio A / average: {median['A'] / median['average']:.3f}")


if __name__ == "__main__":
    main()
