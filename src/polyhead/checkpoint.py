"""Application layer: rebuild a trained model from a polyhead checkpoint, read once.

A checkpoint holds the resolved run config (``polyhead_config``) and the weights. Loading one
runs nothing it holds: the file is read with ``torch.load(weights_only=True)`` (tensors and
plain data only), and its model and ``Normalize`` steps are built through polyhead's allow-list
(`polyhead.safe_build`), never by calling whatever a stored ``_target_`` names. A shared
``.safetensors`` file with its JSON spec beside it (`polyhead.model_file`) loads the same way.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PosixPath, PurePosixPath, PureWindowsPath, WindowsPath
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from polyhead import safe_build
from polyhead.errors import ConfigError
from polyhead.models.single import as_polyhead_model

#: harmless data types a run config may hold (paths given through the Python API), which
#: ``torch.load(weights_only=True)`` refuses unless allowed; rebuilding one does no I/O
SAFE_TYPES = (PosixPath, WindowsPath, PurePosixPath, PureWindowsPath)
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
    """Load a checkpoint file on the CPU: tensors and plain data only (``weights_only``).

    A ``.safetensors`` file is read with its model spec (`polyhead.model_file`). A file that
    holds anything else (e.g. a pickled object that would run code) is refused unread.
    """
    if not Path(path).is_file():
        raise ConfigError(f"checkpoint not found: {path}")
    if Path(path).suffix == ".safetensors":
        from polyhead.model_file import read_safetensors

        return read_safetensors(path)
    try:
        with torch.serialization.safe_globals(list(SAFE_TYPES)):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle.UnpicklingError, RuntimeError of a damaged zip, ...
        raise ConfigError(_refusal(path, err)) from None
    if not isinstance(ckpt, dict):
        raise ConfigError(f"{path}: not a polyhead checkpoint (holds {type(ckpt).__name__})")
    return ckpt


def _refusal(path: str | Path, err: Exception) -> str:
    """One line saying why ``torch.load(weights_only=True)`` refused ``path``."""
    text = str(err)
    try:  # lists what the pickle names, without running it
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:
        names = re.findall(r"GLOBAL ([\w.]+)", text)
    if names:
        return (
            f"{path}: refused to load: it holds {', '.join(sorted(set(names)))}, which a "
            "checkpoint may not (only tensors and plain data are read; unpickling it could run "
            "code)"
        )
    detail = text.split("WeightsUnpickler error:", 1)[-1]
    first = next((line.strip() for line in detail.splitlines() if line.strip()), repr(err))
    return f"{path}: cannot read the checkpoint (tensors and plain data only): {first}"


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


def normalization_steps(cfg: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """``(config key, steps)``: the ``Normalize`` entries of the run's validation (else
    training) augmentations, as stored (plain data)."""
    for key in ("val_dataset", "train_dataset"):
        steps = (cfg.get(key) or {}).get("augmentation_list") or []
        norms = [
            s
            for s in steps
            if isinstance(s, dict) and str(s.get("_target_", "")).endswith(".Normalize")
        ]
        if norms:
            return f"{key}.augmentation_list", norms
    return "", []


def inference_normalization(cfg: dict[str, Any]) -> Any:
    """The ``Normalize`` steps of the run's validation (else training) augmentations, built
    through the allow-list (`polyhead.safe_build.NORMALIZE_TARGETS`); None when there are none."""
    import albumentations as A

    key, steps = normalization_steps(cfg)
    if not steps:
        return None
    return A.Compose(safe_build.build(steps, key, safe_build.NORMALIZE_TARGETS))


def load_checkpoint(path: str | Path, overrides: Sequence[str] = ()) -> LoadedCheckpoint:
    """Read a checkpoint once and rebuild its model (EMA weights when the run used EMA).

    ``overrides`` are dotted ``key=value`` strings on the stored config. Pretrained encoder
    weights are not fetched again; the checkpoint holds every weight.
    """
    ckpt = read_checkpoint(path)
    cfg = checkpoint_config(ckpt, overrides, path)
    try:  # every _target_ is checked before anything is built
        key, steps = normalization_steps(cfg)
        safe_build.check(steps, key, safe_build.NORMALIZE_TARGETS)
        model = safe_build.build_model(cfg.get("model"))
        normalize = inference_normalization(cfg)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    state = ckpt.get("state_dict")
    if not isinstance(state, dict):
        raise ConfigError(f"{path}: the checkpoint holds no state_dict")
    weights = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    if any(k.startswith(WRAPPED_PREFIX) for k in weights):  # trained as a NetworkModel
        model = as_polyhead_model(model)
    model.load_state_dict(weights)
    return LoadedCheckpoint(Path(path), model.eval(), cfg, normalize)


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
