"""``polyhead distill-targets``: cache a teacher's probabilities and uncertainty maps.

Wire into ``polyhead.cli.build_parser`` with ``add_parsers(sub)``; the parser's ``func(args)``
returns the exit code.
"""

from __future__ import annotations

import argparse

from polyhead.errors import ConfigError


def build_teacher(
    checkpoints: list[str], mode: str = "ensemble", samples: int = 8, head: str | None = None
):
    """An `EnsembleTeacher` from checkpoints: ``ensemble`` (>= 2), ``flip`` or ``mc-dropout``
    (exactly one checkpoint)."""
    from polyhead.checkpoint import load_checkpoint, load_teacher
    from polyhead.distill.teacher import EnsembleTeacher

    if mode == "ensemble":
        return load_teacher(checkpoints, head=head)
    if len(checkpoints) != 1:
        raise ConfigError(
            f"--teacher-mode {mode} takes exactly one checkpoint, got {len(checkpoints)}"
        )
    loaded = load_checkpoint(checkpoints[0])
    model, normalize = loaded.model, loaded.normalize
    if mode == "flip":
        return EnsembleTeacher.flip_tta(model, head=head, normalize=normalize)
    if mode == "mc-dropout":
        return EnsembleTeacher.mc_dropout(model, samples, head=head, normalize=normalize)
    raise ConfigError(f"--teacher-mode must be ensemble, flip or mc-dropout, got {mode!r}")


def cmd_distill_targets(args: argparse.Namespace) -> int:
    """Run the teacher over ``--csv`` and write targets and ``distill.csv`` under ``--out``."""
    from polyhead.distill.targets import write_distillation_targets

    teacher = build_teacher(args.teacher, args.teacher_mode, args.samples, args.head)
    result = write_distillation_targets(
        teacher,
        args.csv,
        args.out,
        tile_size=args.tile_size,
        overlap=args.overlap,
        batch_size=args.batch_size,
        device=args.device,
        uncertainty_dtype=args.uncertainty_dtype,
    )
    print(
        f"wrote targets for {len(result.probs_paths)} image(s) in {result.seconds:.1f} s; "
        f"train the student on {result.csv_path}"
    )
    return 0


def add_parsers(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``distill-targets`` on ``subparsers``; returns its parser."""
    p = subparsers.add_parser(
        "distill-targets",
        help="cache a teacher ensemble's probabilities and uncertainty maps for distillation",
    )
    p.add_argument(
        "--teacher",
        nargs="+",
        required=True,
        metavar="CKPT",
        help="teacher checkpoints: 2 or more (ensemble), or 1 with --teacher-mode",
    )
    p.add_argument(
        "--teacher-mode",
        choices=("ensemble", "flip", "mc-dropout"),
        default="ensemble",
        help="ensemble of checkpoints, or one model's flip TTA / MC-dropout samples",
    )
    p.add_argument("--samples", type=int, default=8, help="MC-dropout samples")
    p.add_argument("--head", help="head of multi-head teachers (default: their inference head)")
    p.add_argument("--csv", required=True, help="CSV with image,mask columns")
    p.add_argument("--out", required=True, help="output folder (teacher/ and distill.csv)")
    p.add_argument("--tile-size", type=int, default=512, help="sliding-window tile (px)")
    p.add_argument("--overlap", type=int, default=64, help="overlap of adjacent tiles (px)")
    p.add_argument("--batch-size", type=int, default=4, help="tiles per forward pass")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1")
    p.add_argument(
        "--uncertainty-dtype",
        choices=("uint16", "float32"),
        default="uint16",
        help="storage of the uncertainty GeoTIFFs (uint16: scaled per band, half the size)",
    )
    p.set_defaults(func=cmd_distill_targets)
    return p
