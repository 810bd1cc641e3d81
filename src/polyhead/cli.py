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

from polyhead.allocator import keep_freed_memory
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
        threads=args.threads or None,
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

    from polyhead.predict_cli import add_predict_parser

    add_predict_parser(sub)

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
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (0: torch's default); 1 stays fast on a busy machine",
    )
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


def _one_of_many_machines() -> bool:
    """True in a process of a job spread over several machines (torchrun, SLURM), where a
    temp file's process id says nothing about whether its writer, maybe elsewhere, runs."""
    env = os.environ
    nodes = env.get("SLURM_NNODES") or env.get("GROUP_WORLD_SIZE") or "1"
    world, local = env.get("WORLD_SIZE"), env.get("LOCAL_WORLD_SIZE")
    return (
        (nodes.isdigit() and int(nodes) > 1)
        or (world is not None and local is not None and world != local)
        or env.get("NODE_RANK", "0") != "0"
    )


def _clean_leftovers(args: argparse.Namespace) -> None:
    """Remove the temp files killed runs left in this command's output folder (not in a job
    over several machines: a live writer on another machine would look dead from here)."""
    out = getattr(args, "output", None) or getattr(args, "out", None)
    if out and Path(out).is_dir() and not _one_of_many_machines():
        from polyhead.io import clean_output_folder

        for path in clean_output_folder(out):
            print(f"polyhead: removed {path} (left by a killed run)", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a sub-command; a user's mistake ends as one line on stderr and exit code 2
    (``--debug``, anywhere on the command line: the full traceback instead; ``--verbose``,
    anywhere: Lightning's banners and tips are shown)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    keep_freed_memory()  # large CPU tensors reused, not faulted in again (polyhead.allocator)
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
