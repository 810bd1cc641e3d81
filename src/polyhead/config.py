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

import difflib
import inspect
import os
import re
from collections.abc import Iterable, Mapping, Sequence
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

#: every top-level key a training config may have (either layout), and what reads it; keys
#: starting with ``_`` are free (values for other entries to interpolate, e.g. ``${_crop}``)
CONFIG_KEYS: dict[str, str] = {
    "model": "the network (train.build_task)",
    "loss": "head A's / the task's loss (flat layout; or task.loss)",
    "optimizer": "optimizer factory, _partial_: true (flat layout; or task.optimizer)",
    "scheduler": "LR scheduler factory, _partial_: true (flat layout; or task.scheduler)",
    "task": "the LightningModule's arguments (and _target_)",
    "train_dataset": "training dataset (flat layout; or data.train_dataset)",
    "val_dataset": "validation dataset (flat layout; or data.val_dataset)",
    "test_dataset": "test dataset (flat layout; or data.test_dataset)",
    "data": "polyhead.data.DataModule and its arguments",
    "callbacks": "Lightning callbacks",
    "pl_trainer": "lightning.pytorch.Trainer arguments (flat layout)",
    "trainer": "lightning.pytorch.Trainer arguments (config groups)",
    "output_dir": "folder of the run folders",
    "seed": "seed_everything",
    "ckpt_path": "resume from this checkpoint, like polyhead train --resume",
    "num_classes": "shared value the config groups interpolate",
    "in_channels": "shared value the config groups interpolate",
    "data_dir": "shared value the examples interpolate",
    "compare": "polyhead compare options",
    "distillation": "uncertainty options of students trained before heads owned them",
    "classes": "class names and colours (polyhead.classes.ClassTable), stored in checkpoints",
    "logger": "csv (default: run_dir/metrics.csv), tensorboard, or a _target_ mapping",
}
#: the ``logger`` names a config may give (else a ``_target_`` mapping)
LOGGERS = ("csv", "tensorboard")
#: where the class count is read from, in order, to check ``classes`` against
CLASS_COUNT_KEYS = (
    ("num_classes",),
    ("train_dataset", "n_classes"),
    ("model", "classes"),
    ("model", "num_classes"),
)
#: Trainer arguments that belong elsewhere now, and where
MOVED_TRAINER_ARGS = {
    "resume_from_checkpoint": "resume with polyhead train --resume RUN_DIR_OR_CKPT",
    "ckpt_path": "resume with polyhead train --resume RUN_DIR_OR_CKPT",
    "callbacks": "list callbacks under the top-level 'callbacks'",
}


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
    from hydra.errors import ConfigCompositionException, OverrideParseException

    with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base=None):
        try:
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
        except (ConfigCompositionException, OverrideParseException) as err:
            base = None
            if _OVERRIDE_FAILED.search(str(err)):
                base = hydra_compose(config_name=config_name)
            raise _override_error(err, base) from None
    return _to_plain(cfg)


_OVERRIDE_FAILED = re.compile(r"Could not override '([^']+)'")


def _override_error(err: Exception, base: Any) -> ConfigError:
    """A Hydra composition error as one line; an override of a key the config lacks names the
    close valid keys (Trainer arguments under ``pl_trainer``/``trainer``)."""
    match = _OVERRIDE_FAILED.search(str(err))
    if match is None or base is None:
        return ConfigError(" ".join(str(err).split()))
    path = match[1]
    parent, _, leaf = path.rpartition(".")
    if parent in ("pl_trainer", "trainer"):
        valid = trainer_arguments()
    else:
        node = OmegaConf.select(base, parent) if parent else base
        valid = [str(k) for k in node] if isinstance(node, DictConfig) else []
        if not parent:
            valid = sorted(set(valid) | set(CONFIG_KEYS))
    if leaf in valid:  # a valid key the config does not set yet
        add = re.search(r"use (\+\S+)", str(err))
        return ConfigError(
            f"{path} is not in the config; add it with a leading +: "
            f"{add[1] if add else '+' + path + '=...'}"
        )
    what = "config key" if not parent else f"{parent} key"
    if parent in ("pl_trainer", "trainer"):
        what = f"{parent} argument"
    return _unknown(what, leaf, valid)


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


def _move_classes(out: dict[str, Any]) -> None:
    """``data.classes`` (config groups) becomes the top-level ``classes``."""
    data = out.get("data")
    if not isinstance(data, Mapping) or "classes" not in data:
        return
    data = dict(data)
    value = data.pop("classes")
    if out.get("classes") is not None and value is not None:
        raise ConfigError("classes is set both at the top level and under data; keep one")
    out["data"] = data
    if value is not None:
        out["classes"] = value


def class_count(cfg: Mapping[str, Any]) -> int | None:
    """The class count a config states (`CLASS_COUNT_KEYS`, first found), else None."""
    for path in CLASS_COUNT_KEYS:
        node: Any = cfg
        for key in path:
            node = node.get(key) if isinstance(node, Mapping) else None
        if isinstance(node, int) and not isinstance(node, bool):
            return node
    return None


def check_classes(cfg: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The config's ``classes`` checked against its class count and written out in full
    (``[{name, color}, ...]``, one per class: what checkpoints store); None when absent."""
    entries = cfg.get("classes")
    if entries is None:
        return None
    from polyhead.classes import ClassTable

    n_classes = class_count(cfg)
    if n_classes is None:
        raise ConfigError(
            "classes: cannot tell the class count to check it against; set num_classes "
            "(or train_dataset.n_classes)"
        )
    return ClassTable.from_config(entries, n_classes, "classes").to_config()


def check_logger(spec: Any) -> None:
    """ConfigError unless ``logger`` is None, one of `LOGGERS` (its package installed) or a
    ``_target_`` mapping."""
    if spec is None or isinstance(spec, Mapping) and "_target_" in spec:
        return
    if spec not in LOGGERS:
        raise ConfigError(
            f"logger: {spec!r} is not one of {', '.join(LOGGERS)} or a _target_ mapping"
        )
    if spec == "tensorboard":
        import importlib.util

        if not any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX")):
            raise ConfigError(
                "logger: tensorboard needs the tensorboard package: "
                "pip install 'polyhead[tensorboard]' (or pip install tensorboard)"
            )


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
    _move_classes(out)
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


def _unknown(what: str, key: str, valid: Iterable[str]) -> ConfigError:
    """``unknown <what> 'key'; did you mean 'x'? valid: ...`` as one line."""
    valid = sorted(valid)
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ";"
    return ConfigError(f"unknown {what} {key!r}{hint} valid: {', '.join(valid)}")


def check_config_keys(cfg: Mapping[str, Any]) -> None:
    """Refuse a top-level key no part of polyhead reads (see `CONFIG_KEYS`)."""
    for key in cfg:
        if not str(key).startswith("_") and key not in CONFIG_KEYS:
            raise _unknown("config key", str(key), CONFIG_KEYS)


def trainer_arguments() -> list[str]:
    """The arguments of ``lightning.pytorch.Trainer``."""
    from lightning.pytorch import Trainer

    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    params = inspect.signature(Trainer.__init__).parameters.values()
    return [p.name for p in params if p.kind in named and p.name != "self"]


def check_trainer_args(args: Mapping[str, Any], section: str = "pl_trainer") -> None:
    """Refuse an argument ``lightning.pytorch.Trainer`` does not take."""
    valid = trainer_arguments()
    for key in args:
        if key in MOVED_TRAINER_ARGS:
            raise ConfigError(f"{section}.{key}: {MOVED_TRAINER_ARGS[key]}")
        if key == "enable_checkpointing" and not args[key]:
            raise ConfigError(
                f"{section}.enable_checkpointing=false: every run writes checkpoints/last.ckpt "
                "(to resume from); leave it out"
            )
        if key not in valid:
            raise _unknown(f"{section} argument", str(key), valid)
