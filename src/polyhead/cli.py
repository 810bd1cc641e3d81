"""polyhead command line: one sub-command per job (``polyhead --help`` lists them).

Heavy imports happen inside each command so ``polyhead --help`` stays quick: building the parser
imports the standard library and the ``add_*`` parser functions of light modules only (no torch,
Lightning or rasterio; ``tests/test_cli_help.py``). This is the only module that touches Hydra's
config composition; everything it calls is a plain Python API.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from polyhead.errors import PolyheadError


def _compose(config_dir: str | None, config_name: str | None, config: str | None, overrides):
    """The run config: ``--config FILE`` or ``--config-dir DIR --config-name NAME``, composed
    by Hydra (config groups, ``experiment=NAME``, overrides) into a resolved plain dict."""
    if config is not None:
        path = Path(config)
        config_dir, config_name = str(path.parent), path.stem
    if config_dir is None or config_name is None:
        raise PolyheadError(
            "give a config: --config FILE.yaml, or --config-dir DIR --config-name NAME "
            "(e.g. --config-dir configs --config-name train experiment=upernet_dual_head)"
        )
    from polyhead.config import compose

    return compose(config_dir, config_name, list(overrides))


def cmd_train(args: argparse.Namespace) -> int:
    """Train in a new run folder, or ``--resume`` one (with its own ``config.yaml`` unless a
    config is given; overrides apply to either)."""
    from polyhead.runs import resolve_resume, run_config
    from polyhead.train import train

    config = args.config
    if args.resume and not (config or args.config_dir or args.config_name):
        run_dir = resolve_resume(args.resume).run_dir
        if run_dir is None:
            raise PolyheadError(f"--resume {args.resume}: in no run folder; give its --config")
        config = str(run_config(run_dir))
    cfg = _compose(args.config_dir, args.config_name, config, args.overrides)
    if args.print_config or args.cfg:
        from polyhead.train import resolved_config_yaml

        print(resolved_config_yaml(cfg), end="")
        return 0
    result = train(cfg, resume=args.resume)
    if result.validation_table:
        print(f"validation ({result.validation}):\n{result.validation_table}")
    print(f"run folder:      {result.run_dir}")
    print(f"best checkpoint: {result.best_checkpoint}")
    print(f"last checkpoint: {result.last_checkpoint}")
    print(f"to continue:     polyhead train --resume {result.run_dir} pl_trainer.max_epochs=N")
    return 0


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
        **_predict_options(args),
    )
    print(f"wrote {len(written)} class maps, uncertainty maps and figures to {args.output}")
    return 0


def _predict_options(args: argparse.Namespace) -> dict:
    return dict(
        head=args.head,
        tta=args.tta,
        crf=args.crf,
        write_probabilities=args.probabilities,
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
        vector=args.vector,
        min_area=args.min_area,
        simplify=args.simplify,
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
    loaded = load_checkpoint(args.checkpoint, list(args.set or []))
    if args.head:
        loaded.model.heads_for(args.head)  # an unknown head fails before any tile runs
    if has_uncertainty_head(loaded.model):
        spread = args.devices > 1 or args.num_nodes > 1 or args.vector
        if spread or args.precision != "fp32" or args.channels_last:
            raise PolyheadError(
                "--devices, --num-nodes, --vector, --precision and --channels-last are not "
                f"available for a distilled student yet ({args.checkpoint})"
            )
        return _predict_student(args, loaded)
    if args.teacher_targets:
        raise PolyheadError(
            "--teacher-targets needs a distilled student checkpoint (a model with an "
            f"uncertainty head); {args.checkpoint} is not one"
        )
    options = {**_predict_options(args), **_spread_options(args)}
    written = predict_files(
        loaded.model,
        args.inputs,
        args.output,
        normalize=loaded.normalize,
        write_uncertainty=args.uncertainty,
        classes=_class_table(loaded),
        **options,
    )
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank == 0:  # one line for all processes
        print(f"wrote {len(written)} class maps to {args.output}")
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    from rich.console import Console

    from polyhead.config import check_data_from_config
    from polyhead.data import check_data

    target = Path(args.target)
    if target.suffix.lower() in (".yaml", ".yml"):
        summaries = check_data_from_config(target)
    else:
        if args.n_classes is None:
            raise PolyheadError("check-data on a CSV needs --n-classes")
        summaries = [check_data(target, args.n_classes, crop_size=args.crop_size)]
    console = Console()
    for summary in summaries:
        console.print(summary.to_table())
    console.print(f"[green]OK[/green]: {len(summaries)} data set(s) passed every check")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if args.which == "classifier":  # the digits comparison, as `polyhead compare --demo`
        out = args.out if args.out != "polyhead-demo" else "polyhead-demo-classifier"
        return main(["compare", "--demo", "--out", out])
    from polyhead.demo.run import run_demo

    run_demo(
        out_dir=args.out,
        n_train=args.scenes,
        size=args.size,
        epochs=args.epochs,
        encoder_name=args.encoder,
    )
    return 0


#: set to 1 by ``--verbose`` (read by `polyhead.train`, its ``VERBOSE_ENV``; not imported here:
#: it imports Lightning): Lightning's banners, tips and model summary are shown
VERBOSE_ENV = "POLYHEAD_VERBOSE"


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """End each option's help with its default (what ``ArgumentDefaultsHelpFormatter`` does,
    also for options without a help text; none shown for ``None`` or a flag's ``False``)."""
    for action in parser._actions:
        default, text = action.default, action.help or ""
        if default is None or isinstance(default, bool) or default == argparse.SUPPRESS:
            continue
        if "%(default)" in text or text == argparse.SUPPRESS:
            continue
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            action.help = f"{text} (default: %(default)s)".lstrip()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("polyhead")
    except PackageNotFoundError:  # a source tree on sys.path, not installed
        from polyhead import __version__

        return __version__


def _describe(commands: Sequence[str]) -> str:
    return (
        "polyhead: vision models with one shared encoder and several heads. "
        f"Commands: {', '.join(commands)}. `polyhead COMMAND --help` lists a command's options."
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``polyhead`` parser; each sub-command's ``func(args)`` returns the exit code."""
    parser = argparse.ArgumentParser(prog="polyhead")
    parser.add_argument("--version", action="version", version=f"polyhead {_version()}")
    parser.add_argument(
        "--debug", action="store_true", help="on an error, show the traceback (any position)"
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show Lightning's start-up banners, tips and model summary (any position)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train from a Hydra/YAML config")
    p.add_argument("--config-dir", help="folder holding the config")
    p.add_argument("--config-name", help="config file name without .yaml")
    p.add_argument("--config", help="path to a YAML config (instead of dir + name)")
    p.add_argument(
        "--resume",
        metavar="RUN_DIR_OR_CKPT",
        help="continue a run in its folder: from its checkpoints/last.ckpt (or this full "
        "checkpoint), with its config.yaml unless a config is given",
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config (YAML) and exit without training",
    )
    p.add_argument("--cfg", choices=["job"], help="--cfg job: Hydra's spelling of --print-config")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. pl_trainer.max_epochs=5")
    p.set_defaults(func=cmd_train)

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
    p.add_argument("--tile-size", type=int, default=512, help="sliding-window tile (px)")
    p.add_argument("--overlap", type=int, default=64, help="overlap of adjacent tiles (px)")
    p.add_argument("--batch-size", type=int, default=4, help="tiles per forward pass")
    p.add_argument(
        "--device", default="cpu", help="torch device of one process, e.g. cpu, cuda, cuda:1"
    )
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
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override the stored config")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("check-data", help="validate a training CSV or config before training")
    p.add_argument("target", help="a CSV (image,mask[,soft_mask]) or a training YAML")
    p.add_argument("--n-classes", type=int, help="number of classes K (needed for a CSV)")
    p.add_argument("--crop-size", type=int, help="CSV: check that images are at least this big")
    p.set_defaults(func=cmd_check_data)

    from polyhead.aggregation.cli import add_aggregate_parser
    from polyhead.calibrate_cli import add_parser as add_calibrate_parser
    from polyhead.classification.cli import add_parsers as add_classifier_parsers
    from polyhead.distill.cli import add_parsers as add_distill_parsers
    from polyhead.psmt.cli import add_parser as add_psmt_parser

    add_aggregate_parser(sub)
    add_classifier_parsers(sub)
    add_distill_parsers(sub)
    add_calibrate_parser(sub)
    add_psmt_parser(sub)

    p = sub.add_parser("demo", help="synthetic data -> dual-head training -> metrics and figure")
    p.add_argument(
        "which",
        nargs="?",
        choices=["segmentation", "classifier"],
        default="segmentation",
        help="segmentation: the dual head; classifier: polyhead compare --demo",
    )
    p.add_argument("--out", default="polyhead-demo", help="output folder")
    p.add_argument("--scenes", type=int, default=6, help="training scenes")
    p.add_argument("--size", type=int, default=192, help="scene size in pixels")
    p.add_argument("--epochs", type=int, default=5, help="training epochs")
    p.add_argument("--encoder", default="resnet18", help="encoder name (random init)")
    p.set_defaults(func=cmd_demo)

    parser.description = _describe(list(sub.choices))
    for command in sub.choices.values():
        _show_defaults(command)
    return parser


#: exceptions of the libraries below that report a user's mistake, not a polyhead bug
USER_ERRORS = ("MisconfigurationException",)


def _one_line(err: BaseException) -> str:
    if isinstance(err, OSError) and not isinstance(err, PolyheadError) and err.strerror:
        where = f": {err.filename}" if err.filename else ""
        return f"{err.strerror}{where}"
    return " ".join(str(err).split()) or type(err).__name__


def _clean_leftovers(args: argparse.Namespace) -> None:
    """Remove the temp files killed runs left in this command's output folder."""
    out = getattr(args, "output", None) or getattr(args, "out", None)
    if out and Path(out).is_dir():
        from polyhead.io import clean_output_folder

        for path in clean_output_folder(out):
            print(f"polyhead: removed {path} (left by a killed run)", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a sub-command; a user's mistake ends as one line on stderr and exit code 2
    (``--debug``, anywhere on the command line: the full traceback instead; ``--verbose``,
    anywhere: Lightning's banners and tips are shown)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug, verbose = "--debug" in argv, "--verbose" in argv
    args = build_parser().parse_args([a for a in argv if a not in ("--debug", "--verbose")])
    before = os.environ.get(VERBOSE_ENV)
    if verbose:
        os.environ[VERBOSE_ENV] = "1"  # read by polyhead.train (and DDP workers it starts)
    try:
        _clean_leftovers(args)
        return args.func(args)
    except Exception as err:
        user_error = isinstance(err, PolyheadError | OSError) or type(err).__name__ in USER_ERRORS
        if debug or not user_error:
            raise
        print(f"polyhead {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    finally:
        if verbose and before is None:
            os.environ.pop(VERBOSE_ENV, None)
        elif verbose:
            os.environ[VERBOSE_ENV] = before


if __name__ == "__main__":
    sys.exit(main())
