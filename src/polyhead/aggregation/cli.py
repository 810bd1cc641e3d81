"""The ``polyhead aggregate`` sub-command (registered by `add_aggregate_parser`)."""

from __future__ import annotations

import argparse
from pathlib import Path
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
    p.add_argument(
        "--gold",
        help="known classes: CSV item,label (labels) or image,gold_mask (masks; a gold_mask "
        "column in the input CSV works too)",
    )
    p.add_argument(
        "--priors",
        help="YAML/JSON annotator priors: {name: {accuracy: 0.9 | confusion: [[..]], "
        "strength: N}}, '*' for every other annotator",
    )
    names = p.add_mutually_exclusive_group()
    names.add_argument("--classes", help="YAML/JSON list of class names or {name, color}")
    names.add_argument("--class-names", help="comma-separated class names, e.g. water,land")
    p.add_argument(
        "--soft-dtype",
        choices=("float32", "uint8"),
        default="float32",
        help="masks: soft mask bands as float32 probabilities or uint8 (probability x 255)",
    )
    p.add_argument(
        "--scheduler",
        help="masks: run the per-image passes on Dask: a scheduler address "
        "(tcp://host:8786) or local:N (N worker processes here)",
    )
    p.add_argument(
        "--workers", type=int, help="masks, without --scheduler: threads (default: 2 x CPUs, max 4)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_aggregate)
    return p


def class_names_from_args(args: argparse.Namespace) -> list[str] | None:
    """Class names from ``--classes FILE`` or ``--class-names a,b,c`` (None: class ids)."""
    from polyhead.classes import ClassTable
    from polyhead.errors import ConfigError

    if getattr(args, "class_names", None):
        entries: object = [n.strip() for n in args.class_names.split(",")]
        where = "--class-names"
    elif getattr(args, "classes", None):
        from polyhead.aggregation.priors import load_yaml_or_json

        entries, where = load_yaml_or_json(Path(args.classes)), str(args.classes)
    else:
        return None
    if isinstance(entries, list) and len(entries) != args.n_classes:
        raise ConfigError(f"{where}: {len(entries)} class names for --n-classes {args.n_classes}")
    return list(ClassTable.from_config(entries, args.n_classes, where=where).names)


def cmd_aggregate(args: argparse.Namespace) -> int:
    """Run the aggregation described by parsed arguments; returns the exit code."""
    from rich.console import Console

    from polyhead.aggregation.inputs import detect_kind
    from polyhead.aggregation.outputs import SCORE_NAME, annotator_score
    from polyhead.errors import ConfigError

    kind = args.kind or detect_kind(args.input)
    if kind == "labels" and (args.scheduler or args.workers):
        raise ConfigError("--scheduler and --workers apply to masks only")
    common: dict[str, Any] = dict(
        method=args.method,
        ignore_index=args.ignore_index,
        max_iter=args.max_iter,
        tol=args.tol,
        smoothing=args.smoothing,
        model=args.model,
        gold=args.gold,
        priors=args.priors,
        class_names=class_names_from_args(args),
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
            soft_dtype=args.soft_dtype,
            scheduler=args.scheduler,
            workers=args.workers,
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
        console.print(f"  {name}: {SCORE_NAME} {annotator_score(conf):.3f}")
    console.print(
        f"wrote {len(result.outputs)} {'soft masks' if kind == 'masks' else 'label file'}"
        f" to {result.out_dir} in {result.seconds:.1f} s"
    )
    return 0
