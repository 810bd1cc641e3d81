"""``polyhead calibrate``: fit softmax temperatures of a segmentation checkpoint's heads.

Wire into ``polyhead.cli.build_parser`` with ``add_parser(sub)``; the parser's ``func(args)``
returns the exit code. The temperatures are stored in the model's buffers, so the calibrated
checkpoint predicts calibrated probabilities through every path (predict, export, evaluate).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from polyhead.errors import ConfigError

#: crop size of the validation grid when the checkpoint's config names none
DEFAULT_CROP = 256


def default_output(checkpoint: str | Path) -> Path:
    """``NAME.calibrated.ckpt`` beside the checkpoint."""
    path = Path(checkpoint)
    return path.with_name(f"{path.stem}.calibrated.ckpt")


def figure_path(out: Path, head: str) -> Path:
    """The reliability diagram of ``head`` beside the calibrated checkpoint ``out``."""
    return out.with_name(f"{out.stem}.reliability-{head}.png")


def validation_dataset(loaded: Any, csv: str, crop_size: int | None) -> Any:
    """The CSV as a grid-mode dataset with the checkpoint's input normalisation."""
    from polyhead.data import RandomCropSegmentationDataset

    val = loaded.config.get("val_dataset") or {}
    classes = getattr(loaded.model, "classes", None) or val.get("n_classes")
    if not classes:
        raise ConfigError(f"{loaded.path}: the model does not say its number of classes")
    return RandomCropSegmentationDataset(
        csv,
        crop_size=crop_size or val.get("crop_size") or DEFAULT_CROP,
        n_classes=int(classes),
        grid_mode=True,
        ignore_index=int(val.get("ignore_index", 255)),
        augmentation_list=loaded.normalize,
    )


def write_calibrated(source: Path, model: Any, out: Path) -> Path:
    """``source``'s checkpoint dict with the model's temperature buffers in its state_dict
    (same ``polyhead_config`` and key layout), written atomically to ``out``."""
    import torch

    from polyhead.checkpoint import read_checkpoint
    from polyhead.io import atomic_write

    ckpt = read_checkpoint(source)
    state = ckpt["state_dict"]
    for name, buffer in model.named_buffers():
        if name.rsplit(".", 1)[-1] in ("temperature", "average_temperature"):
            state[f"model.{name}"] = buffer.detach().clone().cpu()
    with atomic_write(out) as tmp:
        torch.save(ckpt, tmp)
    return out


def print_table(results: list[Any]) -> None:
    """T, NLL and ECE before/after, one row per head."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="temperature calibration (NLL of the hard mask; ECE, 15 bins)")
    for col in ("head", "T", "NLL before", "NLL after", "ECE before", "ECE after"):
        table.add_column(col, justify="left" if col == "head" else "right")
    for r in results:
        table.add_row(
            r.head,
            f"{r.temperature:.3f}",
            f"{r.nll_before:.4f}",
            f"{r.nll_after:.4f}",
            f"{r.before.ece:.4f}",
            f"{r.after.ece:.4f}",
        )
    Console().print(table)


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Fit, store, write the calibrated checkpoint and one reliability diagram per head."""
    from polyhead.checkpoint import load_checkpoint
    from polyhead.inference.calibration import calibrate_model, save_reliability_figure

    loaded = load_checkpoint(args.checkpoint)
    if not hasattr(loaded.model, "class_map_heads"):
        raise ConfigError(
            f"{args.checkpoint}: not a polyhead segmentation model (no class-map heads); "
            "calibrate checkpoints of polyhead train"
        )
    out = Path(args.output) if args.output else default_output(args.checkpoint)
    if out.resolve() == Path(args.checkpoint).resolve():
        raise ConfigError(f"-o {out} is the input checkpoint; give another path")
    dataset = validation_dataset(loaded, args.csv, args.crop_size)
    results = calibrate_model(
        loaded.model,
        dataset,
        ignore_index=dataset.ignore_index,
        max_pixels=args.max_pixels,
        seed=args.seed,
        batch_size=args.batch_size,
        device=args.device,
    )
    write_calibrated(Path(args.checkpoint), loaded.model.cpu(), out)
    print_table(results)
    for r in results:
        save_reliability_figure(figure_path(out, r.head), r)
    print(f"calibrated checkpoint: {out}")
    print(f"reliability diagrams: {figure_path(out, '*')}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``calibrate`` on ``subparsers``; returns its parser."""
    p = subparsers.add_parser(
        "calibrate",
        help="fit a softmax temperature per class-map head (and average) on validation data",
    )
    p.add_argument("checkpoint", help="a segmentation checkpoint written by polyhead train")
    p.add_argument("--csv", required=True, help="validation CSV: image,mask[,soft_mask]")
    p.add_argument(
        "--output", "-o", help="calibrated checkpoint (default: NAME.calibrated.ckpt beside it)"
    )
    p.add_argument("--crop-size", type=int, help="grid tile size (default: the run's val crop)")
    p.add_argument(
        "--max-pixels", type=int, default=2_000_000, help="pixels kept for the fit (seeded)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_calibrate)
    return p
