"""Application layer: rebuild a trained model from a polyhead checkpoint, read once.

A checkpoint holds the resolved run config (``polyhead_config``) and the weights. This module
(with the CLI and ``train``) is where stored configs are read and ``_target_`` entries are
instantiated; the library below it takes built objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from polyhead.errors import ConfigError
from polyhead.models.single import as_polyhead_model

#: state-dict prefix of a network that SegmentationTask wrapped as a one-head model
WRAPPED_PREFIX = "heads.main.network."


@dataclass
class LoadedCheckpoint:
    """A checkpoint's model (eval mode, its weights), run config and input normalisation."""

    path: Path
    model: nn.Module
    config: dict[str, Any]
    normalize: Any


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file on the CPU."""
    if not Path(path).is_file():
        raise ConfigError(f"checkpoint not found: {path}")
    return torch.load(path, map_location="cpu", weights_only=False)


def checkpoint_config(
    ckpt: dict[str, Any], overrides: Sequence[str] = (), path: str | Path = "checkpoint"
) -> dict[str, Any]:
    """The run config stored in a loaded checkpoint, with ``key=value`` overrides applied."""
    if "polyhead_config" not in ckpt:
        raise ConfigError(f"{path}: not a polyhead checkpoint (no polyhead_config inside)")
    cfg = OmegaConf.create(ckpt["polyhead_config"])
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    return _upgrade(OmegaConf.to_container(cfg, resolve=True))


def _upgrade(cfg: dict[str, Any]) -> dict[str, Any]:
    """Configs of students trained before heads owned their uncertainty mapping kept it in a
    ``distillation`` entry; fold it into the uncertainty head's options."""
    spec = cfg.get("distillation")
    heads = (cfg.get("model") or {}).get("heads")
    if spec and isinstance(heads, dict) and spec.get("uncertainty_head") in heads:
        head = dict(heads[spec["uncertainty_head"]])
        for key in ("transform", "activation", "uncertainty_target", "log_eps"):
            if key in spec:
                head.setdefault(key, spec[key])
        heads[spec["uncertainty_head"]] = head
    return cfg


def inference_normalization(cfg: dict[str, Any]) -> Any:
    """The ``Normalize`` steps of the run's validation (else training) augmentations."""
    import albumentations as A

    for key in ("val_dataset", "train_dataset"):
        steps = (cfg.get(key) or {}).get("augmentation_list") or []
        norms = [s for s in steps if str(s.get("_target_", "")).endswith(".Normalize")]
        if norms:
            return A.Compose([instantiate(s) for s in norms])
    return None


def load_checkpoint(path: str | Path, overrides: Sequence[str] = ()) -> LoadedCheckpoint:
    """Read a checkpoint once and rebuild its model (EMA weights when the run used EMA).

    ``overrides`` are dotted ``key=value`` strings on the stored config. Pretrained encoder
    weights are not fetched again; the checkpoint holds every weight.
    """
    ckpt = read_checkpoint(path)
    cfg = checkpoint_config(ckpt, overrides, path)
    model_cfg = dict(cfg["model"])
    if "encoder_weights" in model_cfg:
        model_cfg["encoder_weights"] = None
    model = instantiate(model_cfg, _convert_="all")
    state = ckpt["state_dict"]
    weights = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    if any(k.startswith(WRAPPED_PREFIX) for k in weights):  # trained as a NetworkModel
        model = as_polyhead_model(model)
    model.load_state_dict(weights)
    return LoadedCheckpoint(Path(path), model.eval(), cfg, inference_normalization(cfg))


def load_model(path: str | Path, overrides: Sequence[str] = ()) -> tuple[nn.Module, dict[str, Any]]:
    """``(model, run config)`` of a checkpoint (see `load_checkpoint`)."""
    loaded = load_checkpoint(path, overrides)
    return loaded.model, loaded.config


def load_teacher(
    paths: Sequence[str | Path],
    head: str | None = None,
    overrides: Sequence[str] = (),
    ddof: int = 1,
) -> Any:
    """An `EnsembleTeacher` of checkpoints (``head`` or each one's inference head); their
    validation ``Normalize`` steps must agree and become the teacher's ``normalize``."""
    from polyhead.distill.teacher import EnsembleTeacher
    from polyhead.inference.predictor import Predictor

    if len(paths) < 2:
        raise ConfigError(
            f"an ensemble teacher needs at least 2 checkpoints, got {len(paths)}; with one "
            "checkpoint use flip_tta or mc_dropout"
        )
    loaded = [load_checkpoint(p, overrides) for p in paths]
    reprs = {repr(c.normalize) for c in loaded}
    if len(reprs) > 1:
        raise ConfigError(
            "teacher checkpoints were trained with different input normalisation; "
            f"found {sorted(reprs)}"
        )
    members = [Predictor(c.model, head) for c in loaded]
    return EnsembleTeacher(members, ddof=ddof, normalize=loaded[0].normalize)
