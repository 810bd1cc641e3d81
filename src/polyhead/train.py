"""Application layer: build and run a training job from a config.

The config is a plain mapping of ``_target_`` entries in either layout `polyhead.config`
describes: the config groups of ``configs/train.yaml`` (``model``, ``data``, ``task``,
``trainer``) or the flat layout of ``configs/examples`` (``model``, ``loss``,
``train_dataset``, ``val_dataset`` (datasets carry their ``data_loader`` options),
``optimizer``/``scheduler`` (``_partial_: true``), ``task``, ``pl_trainer``). Both take
``callbacks`` (list), ``output_dir`` and ``seed``.

Everything is instantiated here and handed over built: datasets (with built transforms) to a
`polyhead.data.DataModule`, which owns the loaders; model, losses and optimizer factories to
the task; the DataModule to ``trainer.fit``. The task never reads the config; it only stores
the resolved one in checkpoints.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from omegaconf import DictConfig

from polyhead.compat import resolve_aliases
from polyhead.config import DATAMODULE, build, flatten_layout, load_config, target_class
from polyhead.errors import ConfigError

#: what a config gets when it leaves a key out
DEFAULTS: dict[str, Any] = {
    "output_dir": "outputs/run",
    "seed": 0,
    "pl_trainer": {"max_epochs": 10, "accelerator": "auto", "devices": 1, "log_every_n_steps": 10},
    "task": {},
    "callbacks": [],
}
DEFAULT_TASK = "polyhead.tasks.SegmentationTask"
#: task arguments that may also sit at the top level (the flat layout)
TOP_LEVEL_TASK_ARGS = ("loss", "optimizer", "scheduler")


@dataclass
class TrainResult:
    output_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    metrics: dict[str, float] = field(default_factory=dict)


def to_plain_config(cfg: Mapping[str, Any] | DictConfig | str | Path) -> dict[str, Any]:
    """Load/resolve a config (YAML path, DictConfig or mapping) to the flat layout + defaults."""
    if isinstance(cfg, str | Path | DictConfig):
        cfg = load_config(cfg)
    plain = flatten_layout(resolve_aliases(dict(cfg)))
    merged = {**DEFAULTS, **plain}
    merged["pl_trainer"] = {**DEFAULTS["pl_trainer"], **(plain.get("pl_trainer") or {})}
    if not merged.get("model"):
        raise ConfigError("config has no 'model' section")
    if not merged.get("train_dataset"):
        raise ConfigError("config has no 'train_dataset' section (or data.train_dataset)")
    return merged


def build_datamodule(cfg: Mapping[str, Any], splits: tuple[str, ...] = ("train", "val")) -> Any:
    """The DataModule of a flat config: its datasets built (transforms included), its own
    arguments from ``data`` (``batch_size``, ``num_workers``, ...)."""
    spec = dict(cfg.get("data") or {})
    cls = target_class(spec.pop("_target_", DATAMODULE), "data")
    datasets = {
        f"{split}_dataset": build(cfg[f"{split}_dataset"], f"{split}_dataset")
        for split in splits
        if cfg.get(f"{split}_dataset")
    }
    options = {k: build(v, f"data.{k}") for k, v in spec.items()}
    try:
        return cls(**datasets, **options)
    except TypeError as err:
        raise ConfigError(f"data: {err}") from None


def build_callbacks(cfg: Mapping[str, Any], output_dir: Path) -> list[pl.Callback]:
    callbacks = [build(c, f"callbacks[{i}]") for i, c in enumerate(cfg.get("callbacks") or [])]
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
    model = build(cfg["model"], "model")
    task_cfg = dict(cfg.get("task") or {})
    if "model" in task_cfg:
        raise ConfigError("task.model: the model is the top-level 'model' entry; move it there")
    task_cls = target_class(task_cfg.pop("_target_", DEFAULT_TASK), "task")
    for key in TOP_LEVEL_TASK_ARGS:
        if cfg.get(key) is not None:
            if task_cfg.get(key) is not None:
                raise ConfigError(f"{key} is set both at the top level and under task; keep one")
            task_cfg[key] = cfg[key]
    teacher = task_cfg.pop("teacher", None)
    built = {
        k: build(v, k if k in TOP_LEVEL_TASK_ARGS else f"task.{k}") for k, v in task_cfg.items()
    }
    if isinstance(teacher, str | list) and all(isinstance(p, str) for p in teacher):
        from polyhead.checkpoint import load_teacher  # a live ensemble of checkpoints

        built["teacher"] = load_teacher([teacher] if isinstance(teacher, str) else teacher)
    elif teacher is not None:
        built["teacher"] = build(teacher, "task.teacher")
    if ignore_index is not None and built.get("ignore_index") is None:
        built["ignore_index"] = ignore_index
    return task_cls(model=model, config=cfg, **built)


def build_trainer(cfg: Mapping[str, Any], output_dir: Path) -> pl.Trainer:
    """``lightning.pytorch.Trainer`` from ``pl_trainer``, with callbacks and a CSV logger."""
    kwargs = dict(cfg["pl_trainer"])
    kwargs.setdefault("default_root_dir", str(output_dir))
    if "logger" not in kwargs:
        kwargs["logger"] = pl.loggers.CSVLogger(str(output_dir), name="", version="")
    elif isinstance(kwargs["logger"], Mapping):
        kwargs["logger"] = build(kwargs["logger"], "pl_trainer.logger")
    return pl.Trainer(callbacks=build_callbacks(cfg, output_dir), **kwargs)


def train(cfg: Mapping[str, Any] | DictConfig | str | Path) -> TrainResult:
    """Train from a config; returns where the checkpoints are and the last validation metrics."""
    cfg = to_plain_config(cfg)
    pl.seed_everything(cfg["seed"], workers=True, verbose=False)
    output_dir = Path(cfg["output_dir"])
    datamodule = build_datamodule(cfg)
    task = build_task(cfg, getattr(datamodule.train_dataset, "ignore_index", None))
    trainer = build_trainer(cfg, output_dir)
    with warnings.catch_warnings():
        # raised inside Lightning's own pytree helper on torch >= 2.10; not actionable here
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
        trainer.fit(task, datamodule=datamodule)
    ckpt = trainer.checkpoint_callback
    best = Path(ckpt.best_model_path) if ckpt is not None and ckpt.best_model_path else None
    last = Path(ckpt.last_model_path) if ckpt is not None and ckpt.last_model_path else None
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    return TrainResult(output_dir, best, last, metrics)
