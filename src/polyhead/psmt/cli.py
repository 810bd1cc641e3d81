"""``polyhead import-psmt CKPT -o OUT.ckpt``: a psmt UPerNetDualHead checkpoint for polyhead.

Wire into ``polyhead.cli.build_parser`` with ``add_parser(sub)``; the parser's ``func(args)``
returns the exit code. The written checkpoint loads in ``polyhead predict --head A|B|average``,
``export`` and ``calibrate`` like one ``polyhead train`` wrote.
"""

from __future__ import annotations

import argparse


def cmd_import_psmt(args: argparse.Namespace) -> int:
    """Convert, then say what was written and what psmt's loss had learned."""
    from polyhead.psmt.checkpoint import import_checkpoint, sigma_lines

    result = import_checkpoint(
        args.checkpoint, args.output, config=args.config, data=not args.no_data
    )
    print(f"wrote {result.output}: {result.tensors} tensors (heads A = hard, B = soft)")
    for path in result.written[:-1]:
        print(f"wrote {path}: hard_mask_csv merged into image,mask,soft_mask")
    if result.log_sigmas:
        print(
            "psmt's learned Kendall sigmas (dropped from the weights; they seed "
            "task.balancing.init when the config names DualHeadKendallLoss):"
        )
        print("\n".join(sigma_lines(result.log_sigmas)))
    if result.dropped:
        print(f"not carried over: {', '.join(result.dropped)}")
    print(f"next: polyhead predict {result.output} IMAGES -o OUT_DIR --head A|B|average")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``import-psmt`` on ``subparsers``; returns its parser."""
    p = subparsers.add_parser(
        "import-psmt",
        help="convert a pytorch_segmentation_models_trainer UPerNetDualHead checkpoint",
    )
    p.add_argument("checkpoint", help="a psmt Lightning checkpoint (.ckpt)")
    p.add_argument("--output", "-o", required=True, help="the polyhead checkpoint to write")
    p.add_argument(
        "--config",
        help="the psmt run's YAML (default: the config stored in the checkpoint)",
    )
    p.add_argument(
        "--no-data",
        action="store_true",
        help="keep only the datasets' Normalize steps (data not on this machine)",
    )
    p.set_defaults(func=cmd_import_psmt)
    return p
