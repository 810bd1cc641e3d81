"""Rebuild a trained model from a polyhead checkpoint, with config overrides."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from polyhead.errors import ConfigError


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
    return OmegaConf.to_container(cfg, resolve=True)


def load_model(path: str | Path, overrides: Sequence[str] = ()) -> tuple[nn.Module, dict[str, Any]]:
    """Build the checkpoint's model (EMA weights when the run used EMA) in eval mode.

    ``overrides`` are dotted ``key=value`` strings on the stored config, e.g.
    ``["model.inference_head=B"]``: a head switch needs no retraining. Pretrained encoder
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
    model.load_state_dict(weights)
    return model.eval(), cfg
