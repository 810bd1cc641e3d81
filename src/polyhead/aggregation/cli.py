"""The ``polyhead aggregate`` sub-command (registered by `add_aggregate_parser`)."""

from __future__ import annotations

import argparse
from typing import Any

AGGREGATE_HELP = "aggregate several annotators' masks or labels (Dawid-Skene or majority vote)"


def add_aggregate_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``aggregate`` on an ``argparse`` sub-parsers object; ``func`` = `cmd_aggregate`."""
    p = subparsers.add_parser("aggregate", help=AGGREGATE_HELP, description=AGGREGATE_HELP)
    p.add_argument(
        "input", help="CSV image,annotator,mask (masks) or item,annotator,label (classification)"
    )
    p.add_argument("--out", "-o", required=True, help="output folder")
    p.add_argument("--n-classes", type=int, required=True, help="number of classes K")
    p.add_argument(
        "--method",
        choices=("dawid_skene", "majority"),
        default="dawid_skene",
        help="Dawid-Skene EM, or majority vote (soft masks: vote fractions)",
    )
    p.add_argument("--kind", choices=("masks", "labels"), help="default: from the CSV columns")
    p.add_argument("--ignore-index", type=int, default=255, help="label meaning 'no label'")
    p.add_argument("--max-iter", type=int, default=100, help="maximum EM iterations")
    p.add_argument(
        "--tol", type=float, default=1e-6, help="stop when the mean log-likelihood changes less"
    )
    p.add_argument(
        "--smoothing",
        type=float,
        default=0.01,
        help="pseudo-count added to confusion and prior counts (0: crowd-kit behaviour)",
    )
    p.add_argument(
        "--model",
        choices=("full", "one_coin"),
        default="full",
        help="full K x K confusion per annotator, or one accuracy per annotator",
    )
    p.add_argument("--per-image-prior", action="store_true", help="masks: class prior per image")
    p.add_argument("--images", help="masks: CSV image,path mapping image keys to imagery files")
    p.add_argument(
        "--empty",
        choices=("error", "skip"),
        default="error",
        help="an image/item nobody labelled: fail (error), or warn and skip the image "
        "(labels: write the item with label ignore_index and zero probabilities)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_aggregate)
    return p


def cmd_aggregate(args: argparse.Namespace) -> int:
    """Run the aggregation described by parsed arguments; returns the exit code."""
    from rich.console import Console

    from polyhead.aggregation.inputs import detect_kind

    kind = args.kind or detect_kind(args.input)
    common: dict[str, Any] = dict(
        method=args.method,
        ignore_index=args.ignore_index,
        max_iter=args.max_iter,
        tol=args.tol,
        smoothing=args.smoothing,
        model=args.model,
    )
    if kind == "masks":
        from polyhead.aggregation.masks import aggregate_masks

        result = aggregate_masks(
            args.input,
            args.out,
            args.n_classes,
            per_image_prior=args.per_image_prior,
            images=args.images,
            empty_images=args.empty,
            progress=not args.no_progress,
            **common,
        )
    else:
        from polyhead.aggregation.labels import aggregate_labels

        result = aggregate_labels(
            args.input,
            args.out,
            args.n_classes,
            empty_items="error" if args.empty == "error" else "keep",
            **common,
        )
    console = Console(stderr=True)
    state = "converged" if result.converged else "stopped at max_iter"
    if result.method == "dawid_skene":
        console.print(f"Dawid-Skene: {result.n_iter} iterations ({state})")
    for name, conf in zip(result.annotators, result.confusion, strict=True):
        console.print(f"  {name}: mean per-class accuracy {conf.diagonal().mean():.3f}")
    console.print(
        f"wrote {len(result.outputs)} {'soft masks' if kind == 'masks' else 'label file'}"
        f" to {result.out_dir} in {result.seconds:.1f} s"
    )
    return 0
