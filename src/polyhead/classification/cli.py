"""``polyhead compare`` and ``polyhead export`` sub-commands (registered by polyhead.cli).

``polyhead compare CONFIG [key=value ...]`` trains the single K-class baseline and the
multi-head model of CONFIG and writes ``comparison.md`` / ``comparison.png``;
``polyhead compare --demo`` first writes scikit-learn's bundled digits as a class-id CSV and
runs the built-in digits config (``configs/examples/classifier_digits.yaml`` as a dict).
``polyhead export CHECKPOINT --format onnx [--head NAME | --all-heads]`` writes ONNX;
``--format safetensors`` writes the weights as ``.safetensors`` with a JSON model spec beside
them (`polyhead.model_file`), which ``polyhead predict`` loads like a checkpoint.

This is the application layer of :mod:`polyhead.classification`: it reads configs and
checkpoints, trains and instantiates (`run_compare`, `export_checkpoint`); the modules beside
it take built models and datasets.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from polyhead.errors import ConfigError, PolyheadError


def run_compare(
    config: str | os.PathLike | Mapping[str, Any],
    out_dir: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    runs: int | None = None,
    threads: int | None = None,
) -> Any:
    """Train baseline and multi-head, score both, write ``comparison.md`` and ``.png``
    (see `polyhead.classification.compare`); returns the `Comparison`.

    ``threads`` sets torch's CPU threads for the whole comparison (restored afterwards).
    """
    import torch

    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        return _compare(config, out_dir, overrides, runs)
    finally:
        torch.set_num_threads(previous_threads)


def _train_runs(configs: Mapping[str, dict]) -> dict[str, Path]:
    from polyhead.train import train

    checkpoints = {}
    for name, run_cfg in configs.items():
        result = train(run_cfg)
        checkpoints[name] = result.best_checkpoint or result.last_checkpoint
        if checkpoints[name] is None:
            raise ConfigError(f"compare: the {name} run wrote no checkpoint")
    return checkpoints


def _compare(config: Any, out_dir: Any, overrides: Sequence[str], runs: int | None) -> Any:
    from polyhead.checkpoint import load_model
    from polyhead.classification import compare as cmp
    from polyhead.config import build, load_config
    from polyhead.train import to_plain_config

    cfg = to_plain_config(load_config(config, overrides))
    options = cfg.get("compare") or {}
    out = Path(out_dir or options.get("output_dir") or cfg["output_dir"])
    tasks, k = cmp.task_rules(cfg)
    configs = dict(zip((cmp.MULTI, cmp.BASELINE), cmp.derive_configs(cfg, out), strict=True))
    checkpoints = _train_runs(configs)
    models = {name: load_model(path)[0] for name, path in checkpoints.items()}
    spec, split = cmp.eval_dataset_config(cfg, k)
    dataset = build(spec, f"{split}_dataset")
    model_cfg = configs[cmp.MULTI]["model"]
    weights = (configs[cmp.MULTI].get("task") or {}).get("head_weights")
    note = (
        f"backbone {model_cfg.get('backbone')}, input {dataset.image_size} px, seed "
        f"{cfg['seed']}, {cfg['pl_trainer'].get('max_epochs')} epochs, head loss weights "
        f"{weights or 'equal'}"
    )
    return cmp.compare_models(
        models,
        dataset,
        tasks,
        k,
        out,
        split=split,
        runs=int(runs or options.get("runs", 50)),
        split_at=model_cfg.get("split_at"),
        notes=[note],
        checkpoints=checkpoints,
    )


def export_checkpoint(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike | None = None,
    heads: Sequence[str] | None = None,
    image_size: int | Sequence[int] | None = None,
    probabilities: bool = False,
    opset: int = 17,
    overrides: Sequence[str] = (),
    loaded: Any = None,
) -> Path:
    """Export a ``polyhead train`` checkpoint; the input size defaults to the training data's.
    ``loaded``: the checkpoint already read (`polyhead.checkpoint.load_checkpoint`)."""
    from polyhead.checkpoint import load_checkpoint
    from polyhead.classification.export import export_model
    from polyhead.data.classification import IMAGENET_MEAN, IMAGENET_STD

    loaded = loaded or load_checkpoint(checkpoint, overrides)
    model, cfg = loaded.model, loaded.config
    data = cfg.get("val_dataset") or cfg.get("train_dataset") or {}
    size = image_size or data.get("image_size") or 224
    meta = {
        "polyhead.mean": list(data.get("mean", IMAGENET_MEAN)),
        "polyhead.std": list(data.get("std", IMAGENET_STD)),
    }
    if output is None:
        suffix = f"-{'-'.join(heads)}" if heads else ""
        output = Path(checkpoint).with_name(f"{Path(checkpoint).stem}{suffix}.onnx")
    return export_model(model, output, size, heads, probabilities, opset, meta)


def cmd_compare(args: argparse.Namespace) -> int:
    """Run the comparison; print the markdown table."""
    from polyhead.classification.compare import markdown_table
    from polyhead.config import load_config

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


def _export_safetensors(args: argparse.Namespace, loaded: Any) -> int:
    """Write ``.safetensors`` + spec; check that they load back to the same weights."""
    import torch

    from polyhead.checkpoint import load_checkpoint
    from polyhead.model_file import write_safetensors

    if args.head:
        raise ConfigError("--head applies to ONNX; a safetensors export holds every head")
    output = args.output or Path(args.checkpoint).with_suffix(".safetensors")
    weights, spec = write_safetensors(loaded, output)
    print(f"wrote {weights} ({weights.stat().st_size / 1024:.0f} KB) and {spec}")
    if not args.no_check:
        back = load_checkpoint(weights).model.state_dict()
        for key, value in loaded.model.state_dict().items():
            if key not in back or not torch.equal(back[key], value):
                weights.unlink(missing_ok=True)
                spec.unlink(missing_ok=True)
                raise PolyheadError(f"{weights}: tensor {key!r} does not load back unchanged")
        print(f"loaded back: {len(back)} tensors identical")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a checkpoint to ONNX (checked against PyTorch with onnxruntime) or to
    safetensors with a JSON model spec."""
    from polyhead.checkpoint import load_checkpoint

    loaded = load_checkpoint(args.checkpoint, args.set or [])  # read once
    if args.format == "safetensors":
        return _export_safetensors(args, loaded)
    heads = None if args.all_heads else args.head
    if hasattr(loaded.model, "forward_heads"):  # a segmentation model: one output per head
        from polyhead.inference.export import compare_segmentation_onnx, export_segmentation_onnx

        output = args.output or Path(args.checkpoint).with_suffix(".onnx")
        path = export_segmentation_onnx(
            loaded.model, output, heads=heads, sample_size=args.image_size or 64, opset=args.opset
        )
        compare = compare_segmentation_onnx
    else:
        from polyhead.classification.export import compare_onnx

        path = export_checkpoint(
            args.checkpoint,
            args.output,
            heads=heads,
            image_size=args.image_size,
            probabilities=args.probabilities,
            opset=args.opset,
            loaded=loaded,
        )
        compare = compare_onnx
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB)")
    if not args.no_check:
        diff = compare(loaded.model, path)
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
    p.add_argument("--runs", type=int, help="latency runs per model (default: 50)")
    p.add_argument("--epochs", type=int, help="training epochs of both models")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--limit", type=int, help="--demo: use only this many digits")
    p.set_defaults(func=cmd_compare)

    p = subparsers.add_parser(
        "export",
        help="export a checkpoint to ONNX (one named output per head) or safetensors + spec",
    )
    p.add_argument("checkpoint", help="a checkpoint written by polyhead train / compare")
    p.add_argument(
        "--format",
        choices=["onnx", "safetensors"],
        default="onnx",
        help="onnx, or safetensors: the weights plus NAME.polyhead.json (loads in predict)",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--head", action="append", metavar="NAME", help="export this head (repeatable)"
    )
    which.add_argument("--all-heads", action="store_true", help="export every head (default)")
    p.add_argument(
        "--output", "-o", help="ONNX / .safetensors file (default: beside the checkpoint)"
    )
    p.add_argument("--image-size", type=int, help="input size (default: the training data's)")
    p.add_argument(
        "--probabilities", action="store_true", help="output probabilities instead of logits"
    )
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime / load-back check")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override the stored config")
    p.set_defaults(func=cmd_export)
