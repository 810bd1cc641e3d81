"""Cost of predict-time uncertainty: plain vs D4 TTA vs MC-dropout, per batch of tiles (CPU).

A UPerNet on resnet18 (random init, a Dropout2d(0.1) before its output layer so MC-dropout
has something to sample) predicts a batch of tiles through `polyhead.inference.Predictor`
with ``tta=None``, ``"d4"`` and ``"mc-dropout=8"``. The variants run interleaved in each
round (the machine is shared), after one plain warm-up pass; the table gives the median seconds
per batch and the ratio to plain. Writes benchmarks/results/tta_cost_cpu.md.

    uv run --no-sync python benchmarks/tta_cost.py [--reps 3] [--size 256] [--batch 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from polyhead.inference import Predictor
from polyhead.io import write_text
from polyhead.models.single import SegmentationModel

VARIANTS = {"plain": None, "d4": "d4", "mc-dropout=8": "mc-dropout=8+seed=0"}


def build_model(classes: int = 6) -> nn.Module:
    """UPerNet/resnet18 with dropout before its output layer (MC-dropout needs one)."""
    torch.manual_seed(0)
    model = SegmentationModel("upernet", encoder_name="resnet18", in_channels=3, classes=classes)
    head = model.heads["main"]
    head.segmentation_head = nn.Sequential(nn.Dropout2d(0.1), head.segmentation_head)
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--size", type=int, default=256, help="tile side, px")
    ap.add_argument("--batch", type=int, default=1, help="tiles per batch")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/tta_cost_cpu.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = build_model()
    x = torch.randn(args.batch, 3, args.size, args.size)
    predictors = {name: Predictor(model, tta=spec) for name, spec in VARIANTS.items()}
    times: dict[str, list[float]] = {name: [] for name in predictors}
    with torch.inference_mode():
        predictors["plain"](x)  # warm-up: every variant runs the same model on the same shape
        for _ in range(args.reps):
            for name, p in predictors.items():
                start = time.perf_counter()
                p(x)
                times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    rows = [
        f"| {name} | {predictors[name].n_passes} | {median[name]:.3f} | "
        f"{median[name] / median['plain']:.2f} | {median[name] / median['plain'] / predictors[name].n_passes:.2f} |"
        for name in predictors
    ]
    text = "\n".join(
        [
            "# Predict-time uncertainty cost (CPU)",
            "",
            f"UPerNet/resnet18 (random init, Dropout2d(0.1) before the output layer), batch of "
            f"{args.batch} tiles of {args.size} px, {args.threads} threads, "
            f"{torch.__version__}; median of {args.reps} interleaved rounds after a warm-up pass.",
            "",
            "| tta | passes | median s / batch | ratio to plain | ratio / passes |",
            "|---|---|---|---|---|",
            *rows,
            "",
            "Command: `uv run --no-sync python benchmarks/tta_cost.py "
            f"--reps {args.reps} --size {args.size} --batch {args.batch} --threads {args.threads}`",
            "",
        ]
    )
    write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
