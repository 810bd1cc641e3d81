"""Build and run a training job from a config (a plain mapping of ``_target_`` entries).

Top-level keys (all but ``model`` and ``train_dataset`` optional):
``model``, ``loss``, ``train_dataset``, ``val_dataset`` (datasets carry their ``data_loader``
options), ``callbacks`` (list), ``optimizer`` (``_partial_: true``), ``scheduler``
(``_partial_: true``), ``task`` (SegmentationTask options, e.g. ``consistency_weight``),
``pl_trainer`` (``lightning.pytorch.Trainer`` arguments), ``output_dir``, ``seed``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from polyhead.compat import resolve_aliases
from polyhead.errors import ConfigError

#: what a config gets when it leaves a key out
DEFAULTS: dict[str, Any] = {
    "output_dir": "outputs/run",
    "seed": 0,
    "pl_trainer": {"max_epochs": 10, "accelerator": "auto", "devices": 1, "log_every_n_steps": 10},
    "task": {},
    "callbacks": [],
}


@dataclass
class TrainResult:
    output_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    metrics: dict[str, float] = field(default_factory=dict)


def to_plain_config(cfg: Mapping[str, Any] | DictConfig | str | Path) -> dict[str, Any]:
    """Load/resolve a config (YAML path, DictConfig or mapping) to plain containers + defaults."""
    if isinstance(cfg, (str, Path)):
        cfg = OmegaConf.load(cfg)
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    plain = resolve_aliases(dict(cfg))
    merged = {**DEFAULTS, **plain}
    merged["pl_trainer"] = {**DEFAULTS["pl_trainer"], **(plain.get("pl_trainer") or {})}
    for key in ("model", "train_dataset"):
        if key not in merged:
            raise ConfigError(f"config has no {key!r} section")
    return merged


def _build(node: Any, key: str) -> Any:
    if not isinstance(node, dict | list):
        return node
    try:
        return instantiate(node, _convert_="all")
    except Exception as err:  # hydra wraps the real cause; name the config key at fault
        cause = err.__cause__ or err
        if isinstance(cause, ConfigError | ValueError | FileNotFoundError):
            raise cause from None
        raise ConfigError(f"config key {key!r}: {err}") from err


def build_callbacks(cfg: Mapping[str, Any], output_dir: Path) -> list[pl.Callback]:
    callbacks = [_build(c, f"callbacks[{i}]") for i, c in enumerate(cfg.get("callbacks") or [])]
    for cb in callbacks:
        if isinstance(cb, pl.callbacks.ModelCheckpoint) and cb.dirpath is None:
            cb.dirpath = str(output_dir / "checkpoints")
    if not any(isinstance(cb, pl.callbacks.ModelCheckpoint) for cb in callbacks):
        callbacks.append(
            pl.callbacks.ModelCheckpoint(
                dirpath=str(output_dir / "checkpoints"), monitor="loss/val", save_last=True
            )
        )
    wants_bar = cfg["pl_trainer"].get("enable_progress_bar", True)
    if wants_bar and not any(isinstance(cb, pl.callbacks.ProgressBar) for cb in callbacks):
        callbacks.append(pl.callbacks.RichProgressBar())
    return callbacks


def build_task(cfg: Mapping[str, Any], ignore_index: int | None = None) -> pl.LightningModule:
    """Instantiate the model, losses and task from a plain config.

    ``ignore_index`` (the training data's) is passed to the task unless ``task`` sets one.
    """
    model = _build(cfg["model"], "model")
    task_cfg = dict(cfg.get("task") or {})
    task_cls = get_class(task_cfg.pop("_target_", "polyhead.tasks.SegmentationTask"))
    built = {k: _build(v, f"task.{k}") for k, v in task_cfg.items()}
    if cfg.get("loss") is not None:
        built["loss"] = _build(cfg["loss"], "loss")
    if cfg.get("optimizer") is not None:
        built["optimizer"] = _build(cfg["optimizer"], "optimizer")
    if cfg.get("scheduler") is not None:
        built["scheduler"] = _build(cfg["scheduler"], "scheduler")
    if ignore_index is not None:
        built.setdefault("ignore_index", ignore_index)
    return task_cls(model=model, config=cfg, **built)


def train(cfg: Mapping[str, Any] | DictConfig | str | Path) -> TrainResult:
    """Train from a config; returns where the checkpoints are and the last validation metrics."""
    cfg = to_plain_config(cfg)
    pl.seed_everything(cfg["seed"], workers=True, verbose=False)
    output_dir = Path(cfg["output_dir"])
    train_ds = _build(cfg["train_dataset"], "train_dataset")
    val_ds = _build(cfg["val_dataset"], "val_dataset") if cfg.get("val_dataset") else None
    task = build_task(cfg, getattr(train_ds, "ignore_index", None))
    trainer_kwargs = dict(cfg["pl_trainer"])
    trainer_kwargs.setdefault("default_root_dir", str(output_dir))
    if "logger" not in trainer_kwargs:
        trainer_kwargs["logger"] = pl.loggers.CSVLogger(str(output_dir), name="", version="")
    elif isinstance(trainer_kwargs["logger"], Mapping):
        trainer_kwargs["logger"] = _build(trainer_kwargs["logger"], "pl_trainer.logger")
    trainer = pl.Trainer(callbacks=build_callbacks(cfg, output_dir), **trainer_kwargs)
    val_loader = val_ds.make_loader() if val_ds is not None else None
    with warnings.catch_warnings():
        # raised inside Lightning's own pytree helper on torch >= 2.10; not actionable here
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
        trainer.fit(task, train_ds.make_loader(), val_loader)
    ckpt = trainer.checkpoint_callback
    best = Path(ckpt.best_model_path) if ckpt is not None and ckpt.best_model_path else None
    last = Path(ckpt.last_model_path) if ckpt is not None and ckpt.last_model_path else None
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    return TrainResult(output_dir, best, last, metrics)
