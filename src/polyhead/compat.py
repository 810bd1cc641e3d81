"""Aliases that let configs written for pytorch_segmentation_models_trainer run on polyhead.

The seed project's documented ``_target_`` paths map to polyhead's own classes; the
``pytorch_lightning`` package maps to ``lightning.pytorch`` (mixing the two packages' callbacks
and trainer fails). psmt's options polyhead names differently (``decoder_use_norm``, list
``crop_size``, ``hard_mask_csv``) and its ``DualHeadKendallLoss`` (which becomes
``task.balancing``, `MOVED_ALIASES`) are translated by `polyhead.psmt.config`. Each alias used
is reported once per run, so a user sees what ran.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from polyhead.errors import ConfigError

SEED_PACKAGE = "pytorch_segmentation_models_trainer"

#: exact ``_target_`` aliases (seed path -> polyhead path)
TARGET_ALIASES: dict[str, str] = {
    f"{SEED_PACKAGE}.custom_models.upernet_dual_head.UPerNetDualHead": "polyhead.models.UPerNetDualHead",
    f"{SEED_PACKAGE}.dataset_loader.dataset.RandomCropSegmentationDataset": "polyhead.data.RandomCropSegmentationDataset",
    f"{SEED_PACKAGE}.custom_callbacks.training_callbacks.EMACallback": "polyhead.callbacks.EMACallback",
}

#: seed targets that move to another config key (see `polyhead.psmt.config.translate_config`)
MOVED_ALIASES: dict[str, str] = {
    f"{SEED_PACKAGE}.custom_losses.loss.DualHeadKendallLoss": (
        "polyhead.losses.balancing.UncertaintyWeighting as task.balancing (from loss or task.loss)"
    ),
}

#: package-prefix aliases
PREFIX_ALIASES: dict[str, str] = {"pytorch_lightning.": "lightning.pytorch."}


def resolve_target(target: str) -> str | None:
    """The polyhead path for an aliased ``_target_``, or None when ``target`` is no alias."""
    if target in TARGET_ALIASES:
        return TARGET_ALIASES[target]
    for old, new in PREFIX_ALIASES.items():
        if target.startswith(old):
            return new + target[len(old) :]
    if target in MOVED_ALIASES:
        raise ConfigError(f"_target_ {target!r} is supported only as {MOVED_ALIASES[target]}")
    if target.startswith(SEED_PACKAGE + "."):
        raise ConfigError(
            f"_target_ {target!r} has no polyhead equivalent; supported seed targets: "
            f"{sorted(TARGET_ALIASES)}"
        )
    return None


def _merged_csv(key: str, input_csv: str, hard_mask_csv: str) -> str:
    """psmt's two CSVs of a dataset entry merged into one polyhead CSV (a temp-folder cache)."""
    from polyhead.psmt.masks import cached_merge

    return str(cached_merge(input_csv, hard_mask_csv))


def resolve_aliases(node: Any, report: Callable[[str], None] | None = print) -> Any:
    """Return a copy of a plain config tree with aliased ``_target_`` values rewritten.

    A whole run config (a mapping) first gets psmt's entries translated
    (`polyhead.psmt.config.translate_config`). ``report`` gets one line per distinct alias
    used (default: print).
    """
    used: dict[str, str] = {}
    if isinstance(node, dict):
        from polyhead.psmt.config import translate_config

        node, used = translate_config(node, _merged_csv, report=report)

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            out = {k: walk(v) for k, v in value.items()}
            target = out.get("_target_")
            if isinstance(target, str):
                new = resolve_target(target)
                if new is not None:
                    out["_target_"] = new
                    used.setdefault(target, new)
            return out
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    result = walk(node)
    if report is not None:
        for old, new in used.items():
            report(f"polyhead: alias {old} -> {new}")
    return result
