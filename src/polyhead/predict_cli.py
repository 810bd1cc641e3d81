"""The ``polyhead predict`` sub-command: class maps and the other outputs for images.

Building the parser imports nothing heavy (``polyhead --help`` stays quick); the command
imports the inference stack when it runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from polyhead.errors import PolyheadError


def _predict_student(args: argparse.Namespace, loaded) -> int:
    """``polyhead predict`` on a student (a model with an uncertainty head): class map,
    the head's uncertainty map and a figure per image."""
    from polyhead.distill.predict import predict_student_files, teacher_uncertainty_paths
    from polyhead.inference.predict import expand_inputs

    images = expand_inputs(args.inputs)
    refs = None
    if args.teacher_targets:
        refs = teacher_uncertainty_paths(args.teacher_targets)
        unmatched = [p.name for p in images if p.stem not in refs]
        if unmatched:
            more = f" and {len(unmatched) - 10} more" if len(unmatched) > 10 else ""
            print(
                f"polyhead predict: warning: no teacher reference in {args.teacher_targets} "
                f"for {', '.join(unmatched[:10])}{more}; their figures have 3 panels",
                file=sys.stderr,
            )
    written = predict_student_files(
        loaded.model,
        images,
        args.output,
        normalize=loaded.normalize,
        reference_uncertainty=refs,
        classes=_class_table(loaded),
        **{**_predict_options(args), **_spread_options(args)},
    )
    if _rank() == 0:  # one line for all processes
        print(f"wrote {len(written)} class maps, uncertainty maps and figures to {args.output}")
    return 0


def _rank() -> int:
    """This process's rank under ``--devices``/``--num-nodes`` (0 when alone)."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _predict_options(args: argparse.Namespace) -> dict:
    return dict(
        head=args.head,
        tta=args.tta,
        crf=args.crf,
        write_probabilities=args.probabilities,
        probabilities_dtype=args.probabilities_dtype,
        tile_size=args.tile_size,
        overlap=args.overlap,
        batch_size=args.batch_size,
        device=args.device,
    )


def _class_table(loaded):
    """The checkpoint's class names and colours: its data config's ``classes`` list (or a
    top-level one), for the model's class count; defaults when it has none; None when the
    class count is unknown."""
    from polyhead.classes import ClassTable

    cfg = loaded.config
    data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
    entries = data.get("classes", cfg.get("classes"))
    n = getattr(loaded.model, "classes", None) or cfg.get("num_classes")
    if not isinstance(n, int) or isinstance(n, bool):
        n = len(entries) if isinstance(entries, list) else None
    if n is None:
        return None
    where = "data.classes" if "classes" in data else "classes"
    return ClassTable.from_config(entries, n, where=f"{loaded.path}: {where}")


def _spread_options(args: argparse.Namespace) -> dict:
    """``predict_files``'s options for processes, precision, classes and vector output."""
    device = args.device
    if args.accelerator == "gpu" and device == "cpu":  # one process asked for a GPU
        device = "cuda"
    return dict(
        device=device,
        devices=args.devices,
        num_nodes=args.num_nodes,
        accelerator=args.accelerator,
        precision=args.precision,
        channels_last=args.channels_last,
        io_threads=args.io_threads,
        overviews=args.overviews,
        skip_existing=args.skip_existing,
        vector=args.vector,
        min_area=args.min_area,
        simplify=args.simplify,
        vector_workers=args.vector_workers,
        preview=args.preview,
    )


def cmd_predict(args: argparse.Namespace) -> int:
    from polyhead.checkpoint import load_checkpoint
    from polyhead.inference.predict import expand_inputs, predict_files, vector_writer
    from polyhead.inference.predictor import has_uncertainty_head
    from polyhead.inference.tta import tta_from_config

    expand_inputs(args.inputs)  # bad inputs fail before the checkpoint is read
    if Path(args.output).exists() and not Path(args.output).is_dir():
        raise PolyheadError(f"-o {args.output} is a file; give a folder for the outputs")
    tta_from_config(args.tta)
    vector_writer(args.vector, None, args.min_area, args.simplify)  # vector module present
    if args.io_threads is not None and args.io_threads < 1:
        raise PolyheadError(f"--io-threads must be at least 1, got {args.io_threads}")
    if args.vector_workers is not None and args.vector_workers < 0:
        raise PolyheadError(f"--vector-workers must be at least 0, got {args.vector_workers}")
    loaded = load_checkpoint(args.checkpoint, list(args.set or []))
    if args.head:
        loaded.model.heads_for(args.head)  # an unknown head fails before any tile runs
    if has_uncertainty_head(loaded.model):
        return _predict_student(args, loaded)
    if args.teacher_targets:
        raise PolyheadError(
            "--teacher-targets needs a distilled student checkpoint (a model with an "
            f"uncertainty head); {args.checkpoint} is not one"
        )
    options = {**_predict_options(args), **_spread_options(args)}
    there: list[Path] = []  # images skipped by --skip-existing
    written = predict_files(
        loaded.model,
        args.inputs,
        args.output,
        normalize=loaded.normalize,
        write_uncertainty=args.uncertainty,
        classes=_class_table(loaded),
        on_skipped=there.extend,
        **options,
    )
    if _rank() == 0:  # one line for all processes
        skipped = f" ({len(there)} already there, skipped)" if there else ""
        print(f"wrote {len(written) - len(there)} class maps to {args.output}{skipped}")
    return 0


def add_predict_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``predict`` to the ``polyhead`` sub-commands."""
    p = sub.add_parser("predict", help="write class maps (and probabilities) for images")
    p.add_argument("checkpoint", help="a checkpoint written by polyhead train")
    p.add_argument("inputs", nargs="+", help="image files, folders, or CSVs with an image column")
    p.add_argument("--output", "-o", required=True, help="output folder")
    p.add_argument(
        "--head", help="the class-map head that answers: a head name (A, B) or 'average'"
    )
    p.add_argument(
        "--probabilities", action="store_true", help="also write per-class probabilities"
    )
    p.add_argument(
        "--probabilities-dtype",
        choices=["float32", "uint8"],
        default="float32",
        help="probabilities as float32, or uint8 x 255 (4x smaller, written about 4x faster)",
    )
    p.add_argument("--tile-size", type=int, default=512, help="sliding-window tile (px)")
    p.add_argument("--overlap", type=int, default=64, help="overlap of adjacent tiles (px)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="tiles per forward pass (default: 4 on a CPU; on a GPU, as many as fit in half "
        "its free memory, at most 64)",
    )
    p.add_argument(
        "--device", default="cpu", help="torch device of one process, e.g. cpu, cuda, cuda:1"
    )
    _add_scale_arguments(p)
    p.add_argument(
        "--tta",
        metavar="SPEC",
        help="test-time augmentation: 'flips', 'd4' (8 flips and quarter turns), "
        "'scales=0.75,1,1.25', 'mc-dropout=N' (N dropout samples) or a '+' of them, "
        "e.g. 'd4+mc-dropout=4'",
    )
    p.add_argument(
        "--crf",
        action="store_true",
        help="refine probabilities with a dense CRF (whole image, <= 4096^2 px)",
    )
    p.add_argument(
        "--uncertainty",
        action="store_true",
        help="also write <stem>_uncertainty.tif (normalised predictive entropy); "
        "implied for a distilled student (its uncertainty head)",
    )
    p.add_argument(
        "--teacher-targets",
        metavar="CSV",
        help="student only: a distill.csv from distill-targets (or its folder); the "
        "<stem>_uncertainty.png figure then also shows the ensemble's uncertainty",
    )
    p.add_argument(
        "--preview",
        action="store_true",
        help="also write <stem>_preview.png: the class map in class colours, with names",
    )
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override the stored config")
    p.set_defaults(func=cmd_predict)


def _add_scale_arguments(p: argparse.ArgumentParser) -> None:
    """``predict``'s options for large areas and many files: processes, precision, I/O
    threads, resuming, overviews, polygons."""
    p.add_argument(
        "--devices",
        type=int,
        default=1,
        metavar="N",
        help="processes per machine (GPUs, or CPU processes); >1: files and row blocks of "
        "large rasters are shared out (Lightning Fabric DDP; torchrun/SLURM detected)",
    )
    p.add_argument("--num-nodes", type=int, default=1, metavar="M", help="machines")
    p.add_argument(
        "--accelerator",
        choices=["cpu", "gpu", "auto"],
        default="auto",
        help="what --devices counts (gpu: one process per GPU)",
    )
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16", "fp16"],
        default="fp32",
        help="model precision (bf16/fp16: autocast on the device)",
    )
    p.add_argument(
        "--channels-last", action="store_true", help="channels-last memory format (GPUs)"
    )
    p.add_argument(
        "--io-threads",
        type=int,
        default=None,
        metavar="N",
        help="GDAL threads decoding inputs and compressing outputs (default: 1 on a CPU, "
        "the process's CPUs on a GPU)",
    )
    p.add_argument(
        "--skip-existing",
        action="store_true",
        help="do not predict images whose requested outputs are all in --output already "
        "(resume a long run)",
    )
    p.add_argument(
        "--overviews",
        action="store_true",
        help="build internal overviews in every GeoTIFF (quick display in GIS software)",
    )
    p.add_argument(
        "--vector",
        choices=["gpkg"],
        help="also polygonise each class map into <stem>_classes.gpkg",
    )
    p.add_argument(
        "--min-area",
        type=float,
        default=0.0,
        metavar="AREA",
        help="--vector: drop polygons smaller than AREA (CRS units squared)",
    )
    p.add_argument(
        "--simplify",
        type=float,
        default=0.0,
        metavar="TOL",
        help="--vector: simplify polygons with tolerance TOL (CRS units; 0: off)",
    )
    p.add_argument(
        "--vector-workers",
        type=int,
        default=None,
        metavar="N",
        help="--vector: processes that polygonise while the next files are predicted "
        "(default: 0 on a CPU, half the CPUs of the process on a GPU)",
    )
