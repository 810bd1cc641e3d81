"""Application layer: read, compose and instantiate configs.

With ``polyhead/cli.py``, ``polyhead/train.py`` and ``polyhead/checkpoint.py`` this is the only
code that imports Hydra or OmegaConf. The library (``polyhead.data``, ``polyhead.models``, ...)
gets what is built here: datasets with built transforms, models, losses, optimizer factories.

Two config layouts train alike:

- the config groups under ``configs/`` (``configs/train.yaml`` + ``experiment=NAME``): ``model``,
  ``data`` (a `polyhead.data.DataModule` holding ``train_dataset``/``val_dataset``/
  ``test_dataset``), ``task`` (with its ``loss``, ``optimizer``, ``scheduler``) and ``trainer``
  (``lightning.pytorch.Trainer`` arguments), each mirroring its class's ``__init__``;
- the flat layout of ``configs/examples/*.yaml`` and the seed project's YAML: datasets, ``loss``,
  ``optimizer``, ``scheduler`` and ``pl_trainer`` at the top.

`flatten_layout` turns the first into the second, which is what checkpoints store (so
``polyhead predict`` finds ``val_dataset`` where it always was).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from polyhead.data.config_check import check_data_in_config
from polyhead.data.validation import DataSummary
from polyhead.errors import ConfigError

DATASET_KEYS = ("train_dataset", "val_dataset", "test_dataset")
DATAMODULE = "polyhead.data.DataModule"
TRAINER = "lightning.pytorch.Trainer"


def _to_plain(cfg: Any) -> dict[str, Any]:
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as err:
        key = getattr(err, "full_key", None) or str(err)
        raise ConfigError(
            f"config value {key} is missing (???); set it, e.g. on the command line: {key}=..."
        ) from None


def load_config(
    config: str | os.PathLike | Mapping[str, Any] | DictConfig, overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """A YAML path or mapping, with dotted ``key=value`` overrides, as a resolved plain dict."""
    if isinstance(config, str | os.PathLike):
        if not Path(config).is_file():
            raise ConfigError(f"config file not found: {config}")
        cfg = OmegaConf.load(config)
    elif isinstance(config, DictConfig):
        cfg = config
    else:
        cfg = OmegaConf.create(dict(config))
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    return _to_plain(cfg)


def compose(
    config_dir: str | os.PathLike, config_name: str, overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """Compose ``config_dir/config_name.yaml`` with Hydra (defaults lists, config groups,
    ``group=option`` and ``+key=value`` overrides) into a resolved plain dict."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base=None):
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
    return _to_plain(cfg)


def build(node: Any, key: str) -> Any:
    """Instantiate a ``_target_`` tree (recursively; lists and dicts as plain containers).

    Errors name the config key; a polyhead error or ``ValueError`` inside a constructor is
    raised as it is, since it already says what to change.
    """
    if isinstance(node, DictConfig | ListConfig):
        node = OmegaConf.to_container(node, resolve=True)
    if not isinstance(node, dict | list):
        return node
    try:
        return instantiate(node, _convert_="all")
    except Exception as err:  # hydra wraps the real cause; name the config key at fault
        cause = err.__cause__ or err
        if isinstance(cause, ConfigError | ValueError | FileNotFoundError):
            raise cause from None
        raise ConfigError(f"config key {key!r}: {err}") from err


def target_class(path: str, key: str) -> type:
    """The class a ``_target_`` string names."""
    try:
        return get_class(path)
    except Exception as err:
        raise ConfigError(f"{key}._target_: cannot import {path!r}: {err}") from None


def _move_datasets(out: dict[str, Any]) -> None:
    data = out.get("data")
    if not isinstance(data, Mapping) or not ("_target_" in data or set(DATASET_KEYS) & set(data)):
        return
    data = dict(data)
    for key in DATASET_KEYS:
        value = data.pop(key, None)
        if value is None:
            continue
        if out.get(key) is not None:
            raise ConfigError(f"{key} is set both at the top level and under data; keep one")
        out[key] = value
    data.setdefault("_target_", DATAMODULE)
    out["data"] = data


def _move_trainer(out: dict[str, Any]) -> None:
    trainer = out.pop("trainer", None)
    if trainer is None:
        return
    if out.get("pl_trainer"):
        raise ConfigError("give trainer or pl_trainer (its older name), not both")
    trainer = dict(trainer)
    target = trainer.pop("_target_", TRAINER)
    if target not in (TRAINER, "pytorch_lightning.Trainer"):
        raise ConfigError(f"trainer._target_ must be {TRAINER}, got {target!r}")
    out["callbacks"] = [*(out.get("callbacks") or []), *(trainer.pop("callbacks", None) or [])]
    out["pl_trainer"] = trainer


def flatten_layout(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The config-group layout in the flat form (see the module docstring); a flat config is
    returned as it is. ``data`` keeps the DataModule's own arguments (``batch_size``, ...)."""
    out = dict(cfg)
    _move_datasets(out)
    _move_trainer(out)
    return out


def check_data_from_config(path_or_mapping: Any) -> list[DataSummary]:
    """``polyhead check-data`` on a training config (YAML path or mapping): every mapping that
    has ``input_csv_path`` is checked (see `polyhead.data.check_data_in_config`). Relative CSV
    paths resolve against the working directory, then against the YAML file's folder."""
    yaml_dir = None
    if isinstance(path_or_mapping, str | os.PathLike):
        if not Path(path_or_mapping).is_file():
            raise ConfigError(f"config file not found: {path_or_mapping}")
        cfg = OmegaConf.load(path_or_mapping)
        yaml_dir = Path(path_or_mapping).resolve().parent
    else:
        cfg = OmegaConf.create(dict(path_or_mapping))
    try:
        tree = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # e.g. ${hydra:...} interpolations outside a Hydra run
        tree = OmegaConf.to_container(cfg, resolve=False)
    return check_data_in_config(tree, yaml_dir)
