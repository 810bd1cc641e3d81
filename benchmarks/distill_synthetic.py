"""Uncertainty distillation on the synthetic data: polyhead's recipe vs the forum thread's.

Steps: synthetic scenes -> M teachers (default 12 x ResNet18-UNet, seeds 0..M-1) -> cached targets
(``distill-targets`` on train and val) -> one student per recipe, same data, epochs and seed
-> evaluation on the held-out val scenes (whole images): Pearson and Spearman of the student's
uncertainty map vs the ensemble's, mean predicted vs target uncertainty, student vs ensemble
mIoU. ``--ablation`` (with ``--reuse`` of the main run's ``--work``) instead runs the thread
recipe with one ingredient removed at a time, and polyhead's recipe on the thread's targets.
Prints a markdown table, writes it to ``benchmarks/results/distill_synthetic.md`` (or
``distill_ablation.md``), saves a figure (image, prediction, student and ensemble
uncertainty) per main recipe and the validation agreement per epoch of every student
(``<table stem>_curves.png``: Pearson, mean and spatial spread of the predicted map relative
to the target's).

    uv run python benchmarks/distill_synthetic.py --work /tmp/d            # main run, AdamW
    uv run python benchmarks/distill_synthetic.py --work /tmp/d --reuse --optimizer sgd \
        --lr 1e-2 --clip 1.0 [--ablation]                                  # SGD (+ ablation)

Defaults (48 training scenes, M = 12, 30 student epochs) are those of the published tables;
a main run takes about 25 min on 2 shared CPU cores (teachers ~10 min, 3 students ~5 min each).

Runs with one torch thread by default: on this shared 2-core machine that was ~3x faster per
step than two threads competing with other jobs.
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import time
import warnings
from pathlib import Path

import torch

from polyhead.checkpoint import load_checkpoint
from polyhead.demo.distill_configs import student_config, teacher_config
from polyhead.demo.synthetic import generate_synthetic_dataset
from polyhead.distill.cli import build_teacher
from polyhead.distill.evaluate import evaluate_student
from polyhead.distill.figures import save_agreement_curves, save_uncertainty_figure
from polyhead.distill.targets import write_distillation_targets
from polyhead.train import train

RESULTS = Path(__file__).resolve().parent / "results"
THREAD = "polyhead.distill.ThreadRecipeLoss"
POLY = "polyhead.distill.DistillationLoss"
REGRESSION = "polyhead.distill.UncertaintyRegressionLoss"
VARIANTS: dict[str, dict] = {
    "polyhead default (entropy)": {"_target_": POLY},
    "polyhead, std_winning target": {"_target_": POLY, "uncertainty_target": "std_winning"},
    "thread recipe": {"_target_": THREAD},
}
ABLATIONS: dict[str, dict] = {
    "thread - sigmoid": {"_target_": THREAD, "sigmoid": False},
    "thread + per-pixel KL": {"_target_": THREAD, "kl": "per_pixel"},
    "thread + sqrt transform": {"_target_": THREAD, "transform": "sqrt"},
    "thread + float32 targets": {"_target_": THREAD, "half_targets": False},
    "thread + variance normalisation": {"_target_": THREAD, "normalize": True},
    "polyhead, std_per_class target": {"_target_": POLY, "uncertainty_target": "std_per_class"},
    "polyhead, std_winning, identity transform": {
        "_target_": POLY,
        "uncertainty_target": "std_winning",
        "uncertainty": {"_target_": REGRESSION, "transform": "identity"},
    },
    "polyhead, entropy, identity transform": {
        "_target_": POLY,
        "uncertainty": {"_target_": REGRESSION, "transform": "identity"},
    },
    "polyhead, std_winning, no variance normalisation": {
        "_target_": POLY,
        "uncertainty_target": "std_winning",
        "uncertainty": {"_target_": REGRESSION, "normalize": False},
    },
}


def _checkpoint(result) -> Path:
    return result.last_checkpoint or result.best_checkpoint


def ensure_teachers(
    work: Path, data, decoders: list[str], epochs: int, crop: int, samples: int, reuse: bool
) -> list[str]:
    """Checkpoints of teachers ``work/teacher_<seed>_<decoder>`` (seed = position), trained
    unless ``reuse`` finds them."""
    ckpts = []
    for seed, decoder in enumerate(decoders):
        out = work / f"teacher_{seed}_{decoder}"
        last = out / "run" / "checkpoints" / "last.ckpt"
        if not (reuse and last.is_file()):
            train(
                teacher_config(
                    data, out, decoder, seed, epochs, crop_size=crop, samples_per_epoch=samples
                )
            )
        ckpts.append(str(last))
    return ckpts


def run(args: argparse.Namespace) -> str:
    work = Path(args.work)
    t0 = time.perf_counter()
    data = generate_synthetic_dataset(
        work / "data", n_train=args.n_train, n_val=args.n_val, size=args.size, seed=0
    )
    timings: dict[str, float] = {}
    ckpts = ensure_teachers(
        work, data, args.teachers, args.teacher_epochs, args.crop, args.samples, args.reuse
    )
    timings["teachers"] = time.perf_counter() - t0
    t = time.perf_counter()
    targets = {}
    for split, csv_path in (("train", data.train_csv), ("val", data.val_csv)):
        out = work / f"targets_{split}_m{len(ckpts)}"  # one cache per teacher count
        if not (args.reuse and (out / "distill.csv").is_file()):
            write_distillation_targets(
                build_teacher(ckpts), csv_path, out, tile_size=args.size, overlap=0
            )
        targets[split] = out / "distill.csv"
    timings["distill-targets"] = time.perf_counter() - t
    variants = ABLATIONS if args.ablation else VARIANTS
    if args.only:
        variants = {k: v for k, v in variants.items() if k in args.only}
    rows, curves = [], {}
    for name, loss in variants.items():
        t = time.perf_counter()
        slug = re.sub(r"[^a-z0-9]+", "_", name.lower().replace("+", "plus")).strip("_")
        student_dir = work / f"student_{args.optimizer}_{slug}"
        if args.seed:
            student_dir = student_dir.with_name(f"{student_dir.name}_seed{args.seed}")
        shutil.rmtree(student_dir, ignore_errors=True)  # no stale checkpoints of earlier runs
        cfg = student_config(
            data,
            targets["train"],
            targets["val"],
            student_dir,
            loss=loss,
            epochs=args.epochs,
            crop_size=args.crop,
            encoder_name=args.student_encoder,
            decoder=args.student_decoder,
            samples_per_epoch=args.samples,
            lr=args.lr,
            seed=args.seed,
        )
        if args.clip:
            cfg["pl_trainer"]["gradient_clip_val"] = args.clip
        if args.optimizer == "sgd":
            cfg["optimizer"] = {
                "_target_": "torch.optim.SGD",
                "_partial_": True,
                "lr": args.lr,
                "momentum": 0.9,
                "weight_decay": 1e-4,
            }
        ckpt = _checkpoint(train(cfg))
        curves[name] = student_dir / "run" / "metrics.csv"
        loaded = load_checkpoint(ckpt)
        res = evaluate_student(
            loaded.model,
            targets["val"],
            loaded.normalize,
            tile_size=args.crop,
            overlap=args.crop // 2,
            keep_maps=True,
        )
        image, pred, unc, ref = res.pop("maps")[0]
        if not args.ablation:
            suffix = ("_sgd" if args.optimizer == "sgd" else "") + (
                f"_seed{args.seed}" if args.seed else ""
            )
            save_uncertainty_figure(
                RESULTS / f"distill_synthetic{suffix}_{slug}.png",
                image,
                pred,
                unc,
                ref,
                class_names=data.class_names,
                title=name,
            )
        res["seconds"] = time.perf_counter() - t
        rows.append((name, res))
        print(
            name,
            {k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()},
            flush=True,
        )
    timings["total"] = time.perf_counter() - t0
    save_agreement_curves(args.curves, curves, title=f"student optimizer {args.optimizer}")
    return _table(rows, args, timings)


def _table(rows, args, timings) -> str:
    lines = [
        "| recipe | evaluated on | Pearson | Spearman | mean pred. unc. | mean target unc. | pred/target | "
        "spread pred/target | student mIoU | ensemble mIoU | train+eval s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        ratio = r["mean_pred"] / r["mean_target"] if r["mean_target"] else float("nan")
        lines.append(
            f"| {name} | {r['target']} | {r['pearson']:.3f} | {r['spearman']:.3f} | {r['mean_pred']:.4f} | "
            f"{r['mean_target']:.4f} | {ratio:.2f} | {r['std_pred'] / r['std_target']:.2f} | "
            f"{r['student_mIoU']:.3f} | "
            f"{r['ensemble_mIoU']:.3f} | {r['seconds']:.0f} |"
        )
    kinds = sorted(set(args.teachers))
    decoders = f"{kinds[0]} each" if len(kinds) == 1 else "/".join(args.teachers)
    settings = (
        f"Settings: {args.n_train} train / {args.n_val} val synthetic scenes of {args.size} px "
        f"(4 bands, 4 classes); M={len(args.teachers)} teachers (resnet18 + {decoders}, seeds "
        f"0-{len(args.teachers) - 1}, {args.teacher_epochs} "
        f"epochs x {args.samples} crops of {args.crop} px); students {args.student_encoder} + "
        f"2 {args.student_decoder} heads, {args.epochs} epochs x {args.samples} crops of "
        f"{args.crop} px, batch 8, "
        f"{'AdamW' if args.optimizer == 'adamw' else 'SGD (momentum 0.9)'} lr {args.lr} (cosine)"
        f"{f', gradient-norm clipping {args.clip}' if args.clip else ''}, seed {args.seed}, random init; evaluated on the 'evaluated on' band of the "
        f"ensemble's uncertainty (per-class heads read at the student's arg-max class and "
        f"compared with std_winning), whole val scenes tiled at the crop size with half "
        f"overlap; torch threads "
        f"{torch.get_num_threads()}. Times: teachers {timings['teachers']:.0f} s, "
        f"distill-targets {timings['distill-targets']:.0f} s, total {timings['total']:.0f} s."
    )
    return "\n".join(lines) + "\n\n" + settings + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/polyhead-distill-bench")
    ap.add_argument("--reuse", action="store_true", help="reuse teachers/targets in --work")
    ap.add_argument("--n-train", type=int, default=48)
    ap.add_argument("--n-val", type=int, default=4)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument(
        "--teachers",
        nargs="+",
        default=["unet"],
        help="teacher decoders (seeds 0, 1, ...); one decoder: --members of it",
    )
    ap.add_argument("--members", type=int, default=12, help="M, when --teachers names one decoder")
    ap.add_argument("--teacher-epochs", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--student-encoder", default="resnet18")
    ap.add_argument("--student-decoder", default="unet")
    ap.add_argument("--samples", type=int, default=128, help="crops per epoch")
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument(
        "--optimizer",
        choices=("adamw", "sgd"),
        default="adamw",
        help="student optimizer (sgd: momentum 0.9, as DeepLab is usually trained)",
    )
    ap.add_argument("--lr", type=float, help="default: 2e-3 (adamw), 1e-2 (sgd)")
    ap.add_argument("--clip", type=float, help="gradient-norm clipping of the students")
    ap.add_argument("--seed", type=int, default=0, help="students' seed")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--ablation",
        action="store_true",
        help="run the ablation variants instead (use --reuse with the main run's --work)",
    )
    ap.add_argument("--only", nargs="*", help="run only these variants (names as in the table)")
    ap.add_argument(
        "--out",
        help="markdown output (default: results/distill_synthetic.md, or "
        "distill_ablation.md with --ablation)",
    )
    args = ap.parse_args()
    if len(args.teachers) == 1:
        args.teachers = args.teachers * args.members
    args.lr = args.lr or (2e-3 if args.optimizer == "adamw" else 1e-2)
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*(does not have many workers|reduction: 'mean').*")
    RESULTS.mkdir(exist_ok=True)
    stem = "distill_ablation" if args.ablation else "distill_synthetic"
    suffix = "_sgd" if args.optimizer == "sgd" else ""
    out = Path(args.out or RESULTS / f"{stem}{suffix}.md")
    args.curves = out.with_name(f"{out.stem}_curves.png")
    table = run(args)
    print(table)
    title = "ablation of the thread's recipe" if args.ablation else "polyhead vs the thread"
    title += f" (student optimizer {args.optimizer})"
    out.write_text(f"# Uncertainty distillation on synthetic data: {title}\n\n{table}")


if __name__ == "__main__":
    main()
