"""``polyhead compare`` and ``polyhead export`` sub-commands (registered by polyhead.cli).

``polyhead compare CONFIG [key=value ...]`` trains the single K-class baseline and the
multi-head model of CONFIG and writes ``comparison.md`` / ``comparison.png``;
``polyhead compare --demo`` first writes scikit-learn's bundled digits as a class-id CSV and
runs the built-in digits config (``configs/examples/classifier_digits.yaml`` as a dict).
``polyhead export CHECKPOINT --format onnx [--head NAME | --all-heads]`` writes ONNX.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from polyhead.errors import PolyheadError


def cmd_compare(args: argparse.Namespace) -> int:
    """Run the comparison; print the markdown table."""
    from polyhead.classification.compare import load_config, markdown_table, run_compare

    overrides = list(args.overrides or [])
    if args.config is not None and "=" in args.config:  # `compare --demo key=value`
        overrides, args.config = [args.config, *overrides], None
    if args.demo:
        from polyhead.classification.digits import demo_config, write_digits

        if args.config is None:
            out = Path(args.out or "polyhead-classifier-demo")
            data = write_digits(out / "data", limit=args.limit)
            config: object = demo_config(data, out, epochs=args.epochs or 12)
        else:
            csv_path = load_config(args.config, overrides)["train_dataset"]["input_csv_path"]
            write_digits(Path(csv_path).parent, limit=args.limit)
            config = args.config
    elif args.config is None:
        raise PolyheadError("give a CONFIG (a multi-head classifier YAML) or --demo")
    else:
        config = args.config
    if args.epochs:
        overrides.append(f"pl_trainer.max_epochs={args.epochs}")
    result = run_compare(
        config, out_dir=args.out, overrides=overrides, runs=args.runs, threads=args.threads
    )
    print(markdown_table(result))
    print(f"wrote {result.markdown} and {result.figure}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a checkpoint to ONNX and check it against PyTorch with onnxruntime."""
    from polyhead.checkpoint import load_model
    from polyhead.classification.export import compare_onnx, export_checkpoint

    heads = None if args.all_heads else args.head
    path = export_checkpoint(
        args.checkpoint,
        args.output,
        heads=heads,
        image_size=args.image_size,
        probabilities=args.probabilities,
        opset=args.opset,
        overrides=args.set or [],
    )
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB)")
    if not args.no_check:
        diff = compare_onnx(load_model(args.checkpoint, args.set or [])[0], path)
        print(f"onnxruntime vs PyTorch: max abs difference {diff:.2e}")
        if diff > 1e-4:
            raise PolyheadError(f"ONNX outputs differ from PyTorch by {diff:.2e} (> 1e-4)")
    return 0


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register ``compare`` and ``export`` on polyhead's sub-command parser."""
    p = subparsers.add_parser(
        "compare", help="single K-class head vs multi-head: precision/recall, latency, size"
    )
    p.add_argument("config", nargs="?", help="multi-head classifier YAML (optional with --demo)")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. pl_trainer.max_epochs=5")
    p.add_argument(
        "--demo",
        action="store_true",
        help="first write scikit-learn's digits (no download) and use them",
    )
    p.add_argument("--out", help="output folder (default: the config's output_dir)")
    p.add_argument("--runs", type=int, help="latency runs per model (default 50)")
    p.add_argument("--epochs", type=int, help="training epochs of both models")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--limit", type=int, help="--demo: use only this many digits")
    p.set_defaults(func=cmd_compare)

    p = subparsers.add_parser("export", help="export a classifier checkpoint (ONNX)")
    p.add_argument("checkpoint", help="a checkpoint written by polyhead train / compare")
    p.add_argument("--format", choices=["onnx"], default="onnx")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--head", action="append", metavar="NAME", help="export this head (repeatable)"
    )
    which.add_argument("--all-heads", action="store_true", help="export every head (default)")
    p.add_argument("--output", "-o", help="ONNX file (default: beside the checkpoint)")
    p.add_argument("--image-size", type=int, help="input size (default: the training data's)")
    p.add_argument(
        "--probabilities", action="store_true", help="output probabilities instead of logits"
    )
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime check")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override the stored config")
    p.set_defaults(func=cmd_export)
