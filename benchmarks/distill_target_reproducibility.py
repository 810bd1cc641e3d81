"""How reproducible is an ensemble's uncertainty map? Disjoint ensembles of M teachers each.

Two ensembles of M teachers that differ only in their seeds are equally valid teachers; the
correlation between their uncertainty maps on held-out scenes is the part of a map that is
about the image rather than about which M models were drawn. A student distilled from one
ensemble cannot be expected to track that ensemble's map much more closely than another
ensemble does. Uses (or trains) the teachers of ``distill_synthetic.py`` in the same
``--work`` folder: ``teacher_<seed>_unet`` for seeds 0 .. 2 x max(M) - 1.

    uv run python benchmarks/distill_target_reproducibility.py --work /tmp/d --n-train 48 --reuse
"""

from __future__ import annotations

import argparse
import csv
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from distill_synthetic import RESULTS, ensure_teachers

from polyhead.checkpoint import load_checkpoint
from polyhead.data import raster_io
from polyhead.demo.synthetic import generate_synthetic_dataset
from polyhead.distill.metrics import pearson, spearman
from polyhead.distill.teacher import EnsembleTeacher, stack_uncertainty
from polyhead.inference.predictor import Predictor
from polyhead.inference.sliding_window import predict_array
from polyhead.losses.uncertainty import UNCERTAINTY_BANDS


def member_probs(ckpts: list[str], images: list[np.ndarray], tile: int) -> list[list[np.ndarray]]:
    """Softmax ``[K, H, W]`` of every teacher on every image (whole image, tiled)."""
    out = []
    for ckpt in ckpts:
        loaded = load_checkpoint(ckpt)
        member, norm = Predictor(loaded.model), loaded.normalize
        out.append([predict_array(member, im, tile, 0, 4, normalize=norm) for im in images])
    return out


def ensemble_maps(probs: list[list[np.ndarray]], members: list[int]) -> dict[str, np.ndarray]:
    """The ensemble's uncertainty bands (``EnsembleTeacher`` statistics) over all images."""

    class Fixed(torch.nn.Module):  # replays a stored member output as its logits
        def __init__(self, p: np.ndarray) -> None:
            super().__init__()
            self.p = torch.from_numpy(np.log(np.clip(p, 1e-12, 1.0)))[None]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.p

    maps: dict[str, list[np.ndarray]] = {b: [] for b in UNCERTAINTY_BANDS}
    for i in range(len(probs[0])):
        stats = EnsembleTeacher([Fixed(probs[m][i]) for m in members])(torch.zeros(1))
        bands = stack_uncertainty(stats)[0].numpy()
        for j, b in enumerate(UNCERTAINTY_BANDS):
            maps[b].append(bands[j].ravel())
    return {b: np.concatenate(v) for b, v in maps.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/polyhead-distill-bench")
    ap.add_argument("--reuse", action="store_true")
    ap.add_argument("--n-train", type=int, default=48)
    ap.add_argument("--n-val", type=int, default=4)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--members", type=int, nargs="+", default=[2, 3, 6])
    ap.add_argument("--teacher-epochs", type=int, default=5)
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--out", default=str(RESULTS / "distill_target_reproducibility.md"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    work = Path(args.work)
    data = generate_synthetic_dataset(
        work / "data", n_train=args.n_train, n_val=args.n_val, size=args.size, seed=0
    )
    n = 2 * max(args.members)
    ckpts = ensure_teachers(
        work, data, ["unet"] * n, args.teacher_epochs, args.crop, args.samples, args.reuse
    )
    with open(data.val_csv, newline="") as fh:
        paths = [data.val_csv.parent / r["image"] for r in csv.DictReader(fh)]
    images = [raster_io.read_window(p, 0, 0, args.size, args.size) for p in paths]
    probs = member_probs(ckpts, images, args.size)
    lines = [
        "| M per ensemble | disjoint pairs | "
        + " | ".join(f"{b} Pearson | {b} Spearman" for b in UNCERTAINTY_BANDS)
        + " |",
        "|---|---|" + "---|---|" * len(UNCERTAINTY_BANDS),
    ]
    for m in args.members:
        pairs = [
            (list(range(2 * k * m, 2 * k * m + m)), list(range(2 * k * m + m, 2 * (k + 1) * m)))
            for k in range(n // (2 * m))
        ]
        scores: dict[str, list[tuple[float, float]]] = {b: [] for b in UNCERTAINTY_BANDS}
        for a, b in pairs:
            ma, mb = ensemble_maps(probs, a), ensemble_maps(probs, b)
            for band in UNCERTAINTY_BANDS:
                x, y = ma[band], mb[band]
                sub = np.random.default_rng(0).choice(x.size, min(x.size, 200_000), replace=False)
                scores[band].append((pearson(x, y), spearman(x[sub], y[sub])))
        cells = " | ".join(
            f"{np.mean([s[0] for s in v]):.3f} | {np.mean([s[1] for s in v]):.3f}"
            for v in scores.values()
        )
        lines.append(f"| {m} | {len(pairs)} | {cells} |")
        print(lines[-1], flush=True)
    table = "\n".join(lines)
    note = (
        f"\n\nTeachers: resnet18 + unet, seeds 0-{n - 1}, {args.teacher_epochs} epochs x "
        f"{args.samples} crops of {args.crop} px on {args.n_train} synthetic scenes of "
        f"{args.size} px; maps on the {args.n_val} held-out scenes (whole image); pairs "
        "of disjoint seed sets, scores averaged over pairs. Command: `uv run python "
        "benchmarks/distill_target_reproducibility.py --work <dir> --n-train "
        f"{args.n_train} --reuse`.\n"
    )
    Path(args.out).write_text(
        "# Reproducibility of an ensemble's uncertainty maps\n\n" + table + note
    )
    print(table)


if __name__ == "__main__":
    main()
