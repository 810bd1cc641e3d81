"""A psmt ``UPerNetDualHead`` Lightning checkpoint as a polyhead checkpoint.

psmt's checkpoint holds ``state_dict`` with the model under ``model.`` (``encoder.*``,
``decoder_A.*``, ``seg_head_A.*``, ``decoder_B.*``, ``seg_head_B.*``) and its loss under
``loss_function.`` (``log_sigma_hard``, ``log_sigma_soft``, ``log_sigma_consist``), and its run
config in ``hyper_parameters["cfg"]``. `import_checkpoint` renames the model's keys to
polyhead's (``heads.A.decoder.*``, ``heads.A.segmentation_head.*``, ...), checks every shape
against the model the translated config builds, drops the loss's tensors (the sigmas are
returned, and seed the imported config's ``task.balancing``) and writes ``{polyhead_config,
state_dict}``, the layout `polyhead train` writes, whole or not at all.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from polyhead.errors import ConfigError

MODEL_PREFIX = "model."
LOSS_PREFIX = "loss_function."
#: psmt module prefix -> polyhead module prefix
KEY_PREFIXES = {
    "encoder.": "encoder.",
    "decoder_A.": "heads.A.decoder.",
    "seg_head_A.": "heads.A.segmentation_head.",
    "decoder_B.": "heads.B.decoder.",
    "seg_head_B.": "heads.B.segmentation_head.",
}
#: polyhead buffers psmt has no counterpart of: softmax temperatures, 1 until calibrated
OWN_BUFFERS = ("temperature", "average_temperature")
#: what an OmegaConf config in ``hyper_parameters`` pickles to (plain containers only)
OMEGACONF_GLOBALS = re.compile(
    r"omegaconf\.(dictconfig\.DictConfig|listconfig\.ListConfig|base\.(Container)?Metadata|"
    r"nodes\.(Any|String|Integer|Float|Boolean)Node)|typing\.Any|collections\.defaultdict|"
    r"builtins\.(dict|list|tuple|int|float|str|bool)"
)


@dataclass
class ImportResult:
    """What `import_checkpoint` wrote and found."""

    output: Path
    config: dict[str, Any]
    log_sigmas: dict[str, float]
    tensors: int
    written: list[Path] = field(default_factory=list)  # merged CSVs, then the checkpoint
    dropped: list[str] = field(default_factory=list)  # config keys and loss tensors left out


def _omegaconf_globals(names: list[str]) -> list[Any] | None:
    """The classes ``names`` refer to, when all are OmegaConf's plain containers; else None."""
    import builtins
    import collections
    import importlib
    import typing

    if not names or not all(OMEGACONF_GLOBALS.fullmatch(n) for n in names):
        return None
    found = []
    for name in names:
        module, _, attr = name.rpartition(".")
        home = {"builtins": builtins, "typing": typing, "collections": collections}.get(module)
        found.append(getattr(home or importlib.import_module(module), attr))
    return found


def read_psmt_checkpoint(path: str | Path) -> dict[str, Any]:
    """A psmt checkpoint, read with ``weights_only=True``; the OmegaConf run config psmt
    pickles into ``hyper_parameters`` is allowed (its plain container classes only)."""
    from polyhead.checkpoint import read_checkpoint

    if not Path(path).is_file():
        raise ConfigError(f"checkpoint not found: {path}")
    try:
        return read_checkpoint(path)
    except ConfigError:
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception:
            raise ConfigError(f"{path}: not a readable checkpoint") from None
        allowed = _omegaconf_globals(names)
        if allowed is None:
            raise
    with torch.serialization.safe_globals(allowed):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict):
        raise ConfigError(f"{path}: not a Lightning checkpoint (holds {type(ckpt).__name__})")
    return ckpt


def stored_config(ckpt: Mapping[str, Any], path: str | Path) -> dict[str, Any]:
    """psmt's run config from ``hyper_parameters`` (``cfg``, or the mapping itself)."""
    from omegaconf import DictConfig, OmegaConf

    hparams = ckpt.get("hyper_parameters") or {}
    cfg = hparams.get("cfg", hparams) if isinstance(hparams, Mapping) else None
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(cfg, Mapping) or "model" not in cfg:
        raise ConfigError(
            f"{path}: no psmt run config in hyper_parameters; pass the run's YAML with "
            "--config (psmt/Hydra writes it to .hydra/config.yaml)"
        )
    return dict(cfg)


def split_state(
    state: Mapping[str, Any], path: str | Path
) -> tuple[dict[str, torch.Tensor], dict[str, float], list[str]]:
    """``(model weights by psmt key, loss log-sigmas, other loss tensors)`` of a psmt
    ``state_dict``; a key outside ``model.``/``loss_function.`` is an error naming it."""
    from polyhead.psmt.config import SIGMA_TERMS

    weights, sigmas, other = {}, {}, []
    for key, value in state.items():
        if key.startswith(MODEL_PREFIX):
            weights[key.removeprefix(MODEL_PREFIX)] = value
        elif key.startswith(LOSS_PREFIX) and key.removeprefix(LOSS_PREFIX) in SIGMA_TERMS:
            sigmas[key.removeprefix(LOSS_PREFIX)] = float(value)
        elif key.startswith(LOSS_PREFIX):
            other.append(key)
        else:
            raise ConfigError(
                f"{path}: state_dict key {key!r} is neither psmt's model ({MODEL_PREFIX}*) nor "
                f"its loss ({LOSS_PREFIX}*)"
            )
    if not weights:
        raise ConfigError(f"{path}: the state_dict holds no {MODEL_PREFIX}* weights")
    return weights, sigmas, other


def polyhead_key(key: str) -> str | None:
    """The polyhead name of a psmt ``UPerNetDualHead`` state-dict key (None: not one)."""
    for old, new in KEY_PREFIXES.items():
        if key.startswith(old):
            return new + key.removeprefix(old)
    return None


def rename_weights(
    weights: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], path: str | Path
) -> dict[str, torch.Tensor]:
    """psmt's weights under polyhead's names, each checked against ``target`` (the polyhead
    model's state dict); polyhead's own buffers psmt lacks keep ``target``'s values."""
    renamed: dict[str, torch.Tensor] = {}
    unknown = [k for k in weights if polyhead_key(k) not in target]
    if unknown:
        raise ConfigError(
            f"{path}: model.{unknown[0]} has no place in polyhead's model"
            + (f" ({len(unknown) - 1} more keys)" if len(unknown) > 1 else "")
            + f"; psmt's UPerNetDualHead keys start with {', '.join(KEY_PREFIXES)}"
        )
    for key, value in weights.items():
        new = polyhead_key(key)
        if tuple(value.shape) != tuple(target[new].shape):
            raise ConfigError(
                f"{path}: model.{key} has shape {tuple(value.shape)}, polyhead's {new} expects "
                f"{tuple(target[new].shape)}; does the config (encoder_name, classes, "
                "decoder_channels, in_channels) match this checkpoint?"
            )
        renamed[new] = value
    missing = [k for k in target if k not in renamed and k.rsplit(".", 1)[-1] not in OWN_BUFFERS]
    if missing:
        raise ConfigError(
            f"{path}: the checkpoint lacks {len(missing)} weight(s) the model needs, e.g. "
            f"{', '.join(missing[:3])}"
        )
    return {k: renamed.get(k, v) for k, v in target.items()}


def _carried(cfg: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The entries polyhead reads (`polyhead.config.CONFIG_KEYS`) and the names of the rest."""
    from polyhead.config import CONFIG_KEYS

    kept = {k: v for k, v in cfg.items() if k in CONFIG_KEYS or k.startswith("_")}
    return kept, sorted(k for k in cfg if k not in kept)


def _normalize_only(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` with each dataset reduced to its ``Normalize`` steps (what prediction uses)."""
    from polyhead.checkpoint import normalization_steps

    out = {k: v for k, v in cfg.items() if not k.endswith("_dataset") and k != "data"}
    key, steps = normalization_steps(cfg)
    if steps:
        out[key.split(".")[0]] = {"augmentation_list": steps}
    return out


def translate(
    psmt_cfg: Mapping[str, Any],
    output: Path,
    sigmas: Mapping[str, float],
    data: bool,
    report: Callable[[str], None] | None,
) -> tuple[dict[str, Any], dict[Path, str], list[str]]:
    """``(polyhead config, {merged CSV path: text}, dropped keys)`` of a psmt run config."""
    from polyhead.compat import resolve_aliases
    from polyhead.psmt.config import PSMT_MODEL, translate_config
    from polyhead.psmt.masks import csv_text, merge_hard_masks

    model = psmt_cfg.get("model") or {}
    if model.get("_target_") != PSMT_MODEL:
        raise ConfigError(
            f"import-psmt converts psmt UPerNetDualHead runs; this model is "
            f"{model.get('_target_')!r}"
        )
    merged: dict[Path, str] = {}

    def place(key: str, soft_csv: str, hard_csv: str) -> str:
        if not data:
            return soft_csv
        target = output.with_name(f"{output.stem}.{key.replace('.', '_')}.csv").resolve()
        merged[target] = csv_text(merge_hard_masks(soft_csv, hard_csv))
        return str(target)

    kept, dropped = _carried(dict(psmt_cfg))
    cfg, _ = translate_config(kept, place, sigmas, report)
    if not data:
        cfg = _normalize_only(cfg)
    return resolve_aliases(cfg, report=report), merged, dropped


def _write_all(ckpt: dict[str, Any], output: Path, texts: Mapping[Path, str]) -> list[Path]:
    """The merged CSVs, then the checkpoint; on any failure none of them stays."""
    from polyhead.io import WriteError, atomic_write, write_text

    written: list[Path] = []
    try:
        for path, text in texts.items():
            written.append(write_text(path, text))
        with atomic_write(output) as tmp:
            torch.save(ckpt, tmp)
    except BaseException as err:
        for path in written:
            path.unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, WriteError):
            raise WriteError(f"could not write {output}: {err}") from err
        raise
    return [*written, output]


def import_checkpoint(
    checkpoint: str | Path,
    output: str | Path,
    config: str | Path | Mapping[str, Any] | None = None,
    data: bool = True,
    report: Callable[[str], None] | None = print,
) -> ImportResult:
    """Convert a psmt ``UPerNetDualHead`` checkpoint into a polyhead checkpoint at ``output``.

    ``config``: psmt's run config (YAML path or mapping) when the checkpoint holds none (or
    another one). ``data=False`` keeps only the datasets' ``Normalize`` steps (for data that
    is not on this machine); else a dataset with ``hard_mask_csv`` gets its merged CSV beside
    ``output`` (``OUT.train_dataset.csv``, ...).
    """
    from polyhead import safe_build
    from polyhead.config import load_config

    src, output = Path(checkpoint), Path(output)
    if output.resolve() == src.resolve():
        raise ConfigError(f"-o {output} is the psmt checkpoint; give another path")
    ckpt = read_psmt_checkpoint(src)
    psmt_cfg = load_config(config) if config is not None else stored_config(ckpt, src)
    state = ckpt.get("state_dict")
    if not isinstance(state, Mapping):
        raise ConfigError(f"{src}: the checkpoint holds no state_dict")
    weights, sigmas, loss_tensors = split_state(state, src)
    cfg, merged, dropped = translate(psmt_cfg, output, sigmas, data, report)
    model = safe_build.build_model(cfg["model"])
    renamed = rename_weights(weights, model.state_dict(), src)
    model.load_state_dict(renamed)  # strict: the last check of names and shapes
    record = {"source": str(src), "log_sigmas": sigmas}
    out = {"polyhead_config": cfg, "state_dict": {f"model.{k}": v for k, v in renamed.items()}}
    written = _write_all({**out, "psmt_import": record}, output, merged)
    return ImportResult(output, cfg, sigmas, len(renamed), written, dropped + loss_tensors)


def sigma_lines(sigmas: Mapping[str, float]) -> list[str]:
    """One line per learned psmt sigma: the term it weighted, sigma and polyhead's log var."""
    from polyhead.psmt.config import SIGMA_TERMS

    return [
        f"  {name} (term {SIGMA_TERMS[name]}): sigma = {math.exp(v):.4f}, log sigma^2 = {2 * v:.4f}"
        for name, v in sigmas.items()
    ]
