"""Application layer: a model shared as ``NAME.safetensors`` with its spec ``NAME.polyhead.json``.

``polyhead export CKPT --format safetensors`` writes both: the weights (safetensors: tensors
only, nothing to unpickle) and a JSON spec holding what rebuilds the model as plain data: the
model config (``_target_`` tree), ``in_channels``, ``classes``, the heads (name, role, outputs),
the inference head and the input normalisation. `read_safetensors` turns the pair back into
what `polyhead.checkpoint.read_checkpoint` returns for a checkpoint, so loading goes through the
same allow-list (`polyhead.safe_build`). Both files are written aside and moved into place.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path, PurePath
from typing import Any

import torch
from torch import nn

from polyhead.errors import ConfigError

SPEC_SUFFIX = ".polyhead.json"
SPEC_FORMAT = "polyhead-model-spec"
SPEC_VERSION = 1
#: classifier input keys of a dataset config kept in the spec
INPUT_KEYS = ("image_size", "mean", "std")


def spec_path(weights: str | Path) -> Path:
    """Where the spec of ``weights`` lies: ``NAME.polyhead.json`` beside ``NAME.safetensors``."""
    weights = Path(weights)
    return weights.with_name(weights.stem + SPEC_SUFFIX)


def _json_default(value: Any) -> Any:
    if isinstance(value, PurePath):  # paths given to a run through the Python API
        return str(value)
    raise TypeError(f"{type(value).__name__} is not plain data")


def _heads(model: nn.Module) -> list[dict[str, Any]]:
    heads = getattr(model, "heads", None)
    if not isinstance(heads, nn.ModuleDict):
        return []
    outputs = dict(getattr(model, "head_outputs", None) or {})
    described = []
    for name, head in heads.items():
        item: dict[str, Any] = {"name": name, "role": getattr(head, "role", None)}
        n = outputs.get(name, getattr(head, "classes", None))
        if isinstance(n, int):
            item["outputs"] = n
        described.append(item)
    return described


def model_spec(loaded: Any) -> dict[str, Any]:
    """The JSON spec of a `polyhead.checkpoint.LoadedCheckpoint` (plain data only)."""
    from polyhead.checkpoint import normalization_steps
    from polyhead.safe_build import without_fetch

    cfg, model = loaded.config, loaded.model
    model_cfg = without_fetch(cfg["model"])
    _, steps = normalization_steps(cfg)
    data = cfg.get("val_dataset") or cfg.get("train_dataset") or {}
    spec = {
        "format": SPEC_FORMAT,
        "version": SPEC_VERSION,
        "source": Path(loaded.path).name,
        "model": model_cfg,
        "in_channels": model_cfg.get("in_channels", getattr(model, "in_channels", None)),
        "classes": model_cfg.get("classes", getattr(model, "classes", None)),
        "heads": _heads(model),
        "inference_head": getattr(model, "inference_head", None),
        "normalization": steps,
        "input": {k: data[k] for k in INPUT_KEYS if k in data},
    }
    try:
        json.dumps(spec, default=_json_default)
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"{loaded.path}: the stored model config is not plain data: {err}"
        ) from None
    return spec


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    # clones: safetensors refuses tensors sharing memory; loading fills each name again
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def write_safetensors(loaded: Any, output: str | Path) -> tuple[Path, Path]:
    """Write ``loaded``'s weights to ``output`` (``.safetensors``) and its spec beside it;
    returns both paths. Both are written aside in full, then moved into place (`polyhead.io`);
    on failure neither temp remains."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from polyhead.io import AtomicPath

    output = Path(output)
    if output.suffix != ".safetensors":
        raise ConfigError(f"--output {output}: a safetensors export ends in .safetensors")
    spec = model_spec(loaded)
    tensors = _weights(loaded.model)

    def verify(tmp: Path) -> bool:
        with safe_open(str(tmp), framework="pt") as fh:
            return set(fh.keys()) == set(tensors)

    output.parent.mkdir(parents=True, exist_ok=True)
    files = [AtomicPath(output, verify), AtomicPath(spec_path(output))]
    try:
        tmp = files[0].tmp_path
        tmp.touch()  # the mode any new file gets here (safetensors itself writes 0600)
        mode = stat.S_IMODE(tmp.stat().st_mode)
        save_file(tensors, str(tmp), metadata={"format": SPEC_FORMAT})
        tmp.chmod(mode)
        files[1].tmp_path.write_text(
            json.dumps(spec, indent=2, default=_json_default) + "\n", encoding="utf-8"
        )
        return files[0].commit(), files[1].commit()
    except BaseException:
        for file in files:
            file.abort()
        raise


def read_spec(weights: str | Path) -> dict[str, Any]:
    """The spec beside ``weights``, checked to be a polyhead model spec."""
    path = spec_path(weights)
    if not path.is_file():
        raise ConfigError(
            f"{weights}: no model spec beside it (expected {path.name}, written by "
            "polyhead export --format safetensors)"
        )
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: not a readable model spec: {err}") from None
    if not isinstance(spec, dict) or spec.get("format") != SPEC_FORMAT:
        raise ConfigError(f"{path}: not a polyhead model spec (format {SPEC_FORMAT!r})")
    if spec.get("version") != SPEC_VERSION:
        raise ConfigError(
            f"{path}: model spec version {spec.get('version')!r}; this polyhead reads "
            f"version {SPEC_VERSION}"
        )
    if not isinstance(spec.get("model"), dict):
        raise ConfigError(f"{path}: the model spec has no model config")
    return spec


def read_safetensors(weights: str | Path) -> dict[str, Any]:
    """A ``.safetensors`` file and its spec as a checkpoint dict (``polyhead_config`` holding
    the model and normalisation, ``state_dict`` with ``model.`` keys)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    spec = read_spec(weights)
    try:
        tensors = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError) as err:
        raise ConfigError(f"{weights}: not a readable safetensors file: {err}") from None
    data = {**(spec.get("input") or {}), "augmentation_list": list(spec.get("normalization") or [])}
    config = {"model": spec["model"], "val_dataset": data}
    return {"polyhead_config": config, "state_dict": {f"model.{k}": v for k, v in tensors.items()}}
