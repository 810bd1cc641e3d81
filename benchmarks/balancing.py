"""Loss balancing on the synthetic scenes: fixed weights vs learned (Kendall) vs DWA.

Two models on one encoder (resnet18, random init, FPN heads): the dual head (A: hard masks,
B: soft masks, JS consistency) and the three-head model of
``configs/experiment/synthetic/three_heads.yaml`` (plus ``cover``: the class fractions of the
crop, an image-level regression head). Each (model, balancer) pair is trained for each seed;
the variants are interleaved (per seed: model, then balancer, one after another) so machine
load hits them alike; ``--workers`` runs the seeds in parallel processes. Reported: the last epoch's validation mIoU and ECE per pixel head (and the cover head's
MAE), mean and standard deviation over the seeds, and each variant's wall time as a ratio to
the fixed-weights run of the same model.

    uv run --no-sync python benchmarks/balancing.py [--seeds 3] [--epochs 4] [--size 96]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from polyhead.demo.run import demo_config
from polyhead.demo.synthetic import generate_synthetic_dataset
from polyhead.io import atomic_write

BALANCERS = {
    "fixed": None,
    "uncertainty": {"_target_": "polyhead.losses.balancing.UncertaintyWeighting"},
    "dwa": {"_target_": "polyhead.losses.balancing.DynamicWeightAveraging"},
}
PIXEL_HEADS = {
    "A": {"decoder": "fpn", "role": "hard", "decoder_segmentation_channels": 32},
    "B": {"decoder": "fpn", "role": "soft", "decoder_segmentation_channels": 32},
}
MODELS = {
    "dual": PIXEL_HEADS,
    "three": {
        **PIXEL_HEADS,
        "cover": {"role": "regression", "classes": 4, "activation": "softmax"},
    },
}
METRICS = ("val/A/mIoU", "val/A/ECE", "val/B/mIoU", "val/B/ECE", "val/cover/MAE")


def run_config(data, out: Path, model: str, balancer: str, seed: int, args) -> dict:
    """The demo's flat config with a multi-head model, the balancer and (three) cover targets."""
    cfg = demo_config(
        data, out, args.epochs, "resnet18", crop_size=args.crop, samples_per_epoch=args.samples
    )
    cfg["seed"] = seed
    cfg["model"] = {
        "_target_": "polyhead.models.MultiHeadSegmentationModel",
        "heads": MODELS[model],
        "encoder_name": "resnet18",
        "encoder_weights": None,
        "in_channels": data.bands,
        "classes": len(data.class_names),
        "inference_head": "A",
    }
    cfg.pop("loss", None)
    cfg["task"] = {"consistency_weight": 0.1, "consistency_warmup_epochs": 1}
    if BALANCERS[balancer] is not None:
        cfg["task"]["balancing"] = dict(BALANCERS[balancer])
    if model == "three":
        for split in ("train_dataset", "val_dataset"):
            cfg[split]["image_targets"] = {"cover": {"fraction_of": "hard"}}
    return cfg


def fit(cfg: dict, epochs: int) -> dict[str, float]:
    """Train the config's task with a bare Trainer (no checkpoints, no logger: only the
    training is timed); the last validation's metrics."""
    import lightning.pytorch as pl

    from polyhead.config import build
    from polyhead.train import build_task

    pl.seed_everything(cfg["seed"], verbose=False)
    train_ds = build(cfg["train_dataset"], "train_dataset")
    val_ds = build(cfg["val_dataset"], "val_dataset")
    task = build_task(cfg, ignore_index=255)
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(task, train_ds.make_loader(), val_ds.make_loader())
    return {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}


def run_seed(data, tmp: Path, seed: int, args) -> list[tuple[tuple[str, str], dict]]:
    """Every (model, balancer) variant for one seed, interleaved, timed one after another."""
    import torch

    torch.set_num_threads(args.threads)
    out = []
    for model in MODELS:
        for balancer in BALANCERS:
            cfg = run_config(data, tmp / f"{model}-{balancer}-{seed}", model, balancer, seed, args)
            start = time.perf_counter()
            metrics = fit(cfg, args.epochs)
            metrics["seconds"] = time.perf_counter() - start
            out.append(((model, balancer), metrics))
            print(model, balancer, seed, {k: round(metrics.get(k, -1), 3) for k in METRICS})
    return out


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--size", type=int, default=96, help="synthetic scene size (px)")
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--samples", type=int, default=64, help="training crops per epoch")
    parser.add_argument("--workers", type=int, default=1, help="seeds run in parallel")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--out", default="benchmarks/results/balancing_cpu.md")
    args = parser.parse_args()

    results: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = generate_synthetic_dataset(Path(tmp) / "data", n_train=6, n_val=2, size=args.size)
        jobs = [(data, Path(tmp), seed, args) for seed in range(args.seeds)]
        if args.workers > 1:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(args.workers) as pool:
                per_seed = pool.starmap(run_seed, jobs)
        else:
            per_seed = [run_seed(*job) for job in jobs]
    for runs in per_seed:
        for key, metrics in runs:
            results.setdefault(key, []).append(metrics)
    write_table(results, args)


def write_table(results: dict[tuple[str, str], list[dict]], args) -> None:
    lines = [
        "# Loss balancing on the synthetic scenes (CPU)",
        "",
        f"`uv run --no-sync python benchmarks/balancing.py --seeds {args.seeds} --epochs "
        f"{args.epochs} --size {args.size} --crop {args.crop} --samples {args.samples} "
        f"--workers {args.workers} --threads {args.threads}`",
        "",
        f"6 training / 2 validation scenes of {args.size} px (4 bands, 4 classes), resnet18 "
        f"random init, FPN heads, {args.epochs} epochs of {args.samples} crops of {args.crop} "
        f"px, AdamW lr 2e-3; {args.seeds} seeds per variant, variants interleaved. Metrics of "
        "the last epoch's validation, mean ± standard deviation over the seeds. Time: wall "
        "time per run as a ratio to the fixed-weights run of the same model (same seeds; "
        "the machine was shared with other jobs, so ratios are rough). Final balance: the "
        "learned log-variances s_t (uncertainty) or DWA weights lambda_t at the last step.",
        "",
        "| model | balancing | A mIoU | A ECE | B mIoU | B ECE | cover MAE | time ratio "
        "| final balance (mean over seeds) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (model, balancer), runs in results.items():
        cells = [spread([r[k] for r in runs if k in r]) for k in METRICS]
        base = statistics.mean(r["seconds"] for r in results[(model, "fixed")])
        ratio = statistics.mean(r["seconds"] for r in runs) / base
        terms = sorted({k for r in runs for k in r if k.startswith("balance/")})
        final = ", ".join(
            f"{t.split('/', 1)[1]} {statistics.mean(r[t] for r in runs):+.3f}" for t in terms
        )
        row = f"| {model} | {balancer} | {' | '.join(cells)} | {ratio:.2f} | {final or '-'} |"
        lines.append(row)
    out = Path(args.out)
    with atomic_write(out) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
