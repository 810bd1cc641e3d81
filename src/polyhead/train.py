"""Application layer: build and run a training job from a config.

The config is a plain mapping of ``_target_`` entries in either layout `polyhead.config`
describes: the config groups of ``configs/train.yaml`` (``model``, ``data``, ``task``,
``trainer``) or the flat layout of ``configs/examples`` (``model``, ``loss``,
``train_dataset``, ``val_dataset`` (datasets carry their ``data_loader`` options),
``optimizer``/``scheduler`` (``_partial_: true``), ``task``, ``pl_trainer``). Both take
``callbacks`` (list), ``output_dir``, ``seed``, ``classes`` (names and colours, checked by
`polyhead.config.check_classes` and stored written out in full as the top-level ``classes``
of every checkpoint's config) and ``logger`` (``csv``, ``tensorboard`` or a ``_target_``).

Everything is instantiated here and handed over built: datasets (with built transforms) to a
`polyhead.data.DataModule`, which owns the loaders; model, losses and optimizer factories to
the task; the DataModule to ``trainer.fit``. The task never reads the config; it only stores
the resolved one in checkpoints.

Each run writes into its own folder under ``output_dir`` (see `polyhead.runs`): its resolved
``config.yaml``, ``checkpoints/last.ckpt`` (always, full: what ``--resume`` continues from) and
the monitored best (weights only), ``metrics.csv`` and ``validation.md``. Checkpoints are
written whole-or-absent (`polyhead.checkpoint_io.AtomicCheckpointIO`); leftover temps of killed
runs in the output folder are removed when a run starts.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from omegaconf import DictConfig

from polyhead.callbacks import RNGStateCallback, RunCheckpoint
from polyhead.checkpoint_io import AtomicCheckpointIO
from polyhead.compat import resolve_aliases
from polyhead.config import (
    DATAMODULE,
    build,
    check_classes,
    check_config_keys,
    check_logger,
    check_trainer_args,
    flatten_layout,
    load_config,
    target_class,
)
from polyhead.errors import ConfigError
from polyhead.io import remove_stale_temp_files
from polyhead.preflight import check_task
from polyhead.progress import (  # VERBOSE_ENV: what `polyhead --verbose` sets, read here
    VERBOSE_ENV,  # noqa: F401
    CompactProgressBar,
    lightning_output,
    verbose_setting,
)
from polyhead.runs import (
    CHECKPOINTS,
    Resume,
    RunCSVLogger,
    discard_new_run,
    new_run_dir,
    resolve_resume,
    run_config,
    write_run_config,
)

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
#: ``_target_``s of Lightning's ModelCheckpoint, built as `polyhead.callbacks.RunCheckpoint`
MODEL_CHECKPOINT_TARGETS = (
    "lightning.pytorch.callbacks.ModelCheckpoint",
    "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint",
)
#: a temp untouched this long whose writer is gone is a leftover (see `polyhead.io.atomic`)
STALE_AFTER_S = 60.0
#: the run folder, for the processes a DDP launch starts (they re-run the same command)
RUN_DIR_ENV = "POLYHEAD_RUN_DIR"


@dataclass
class TrainResult:
    """Where a run wrote its files, and its last validation metrics."""

    run_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    metrics: dict[str, float] = field(default_factory=dict)
    validation: Path | None = None  # validation.md
    validation_table: str | None = None  # its per-head table (markdown)
    resumed_from: Path | None = None

    @property
    def output_dir(self) -> Path:
        """The run folder (the name earlier versions used)."""
        return self.run_dir


def to_plain_config(cfg: Mapping[str, Any] | DictConfig | str | Path) -> dict[str, Any]:
    """Load/resolve a config (YAML path, DictConfig or mapping) to the flat layout + defaults."""
    if isinstance(cfg, str | Path | DictConfig):
        cfg = load_config(cfg)
    check_config_keys(cfg)
    plain = flatten_layout(resolve_aliases(dict(cfg)))
    check_trainer_args(
        plain.get("pl_trainer") or {}, "trainer" if "trainer" in cfg else "pl_trainer"
    )
    merged = {**DEFAULTS, **plain}
    merged["pl_trainer"] = {**DEFAULTS["pl_trainer"], **(plain.get("pl_trainer") or {})}
    classes = check_classes(merged)
    if classes is not None:
        merged["classes"] = classes
    check_logger(merged.get("logger"))
    if not merged.get("model"):
        raise ConfigError("config has no 'model' section")
    if not merged.get("train_dataset"):
        raise ConfigError("config has no 'train_dataset' section (or data.train_dataset)")
    return merged


def resolved_config_yaml(cfg: Mapping[str, Any] | DictConfig | str | Path) -> str:
    """The config a run would use and store (defaults filled in, ``classes`` written out),
    as YAML: what ``polyhead train --print-config`` prints."""
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(to_plain_config(cfg)))


def build_logger(spec: Any, run_dir: Path, keep_below_step: int | None = None) -> Any:
    """The run's logger: ``csv`` (None: ``run_dir/metrics.csv``), ``tensorboard``
    (``run_dir/tensorboard/``) or a built ``_target_`` mapping."""
    check_logger(spec)
    if spec is None or spec == "csv":
        return RunCSVLogger(run_dir, keep_below_step=keep_below_step)
    if spec == "tensorboard":
        return pl.loggers.TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="")
    return build(spec, "logger")


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


def _callback_spec(spec: Any) -> Any:
    """A callback entry, Lightning's ModelCheckpoint built as `RunCheckpoint`."""
    if isinstance(spec, Mapping) and spec.get("_target_") in MODEL_CHECKPOINT_TARGETS:
        return {**spec, "_target_": f"{RunCheckpoint.__module__}.{RunCheckpoint.__name__}"}
    return spec


def build_callbacks(
    cfg: Mapping[str, Any], run_dir: Path, extra: Sequence[pl.Callback] = ()
) -> list[pl.Callback]:
    """The config's callbacks and ``extra`` (built ones), every checkpoint in
    ``run_dir/checkpoints``: the first ModelCheckpoint also writes ``last.ckpt`` (a
    `RunCheckpoint` on ``loss/val`` when the config has none); RNG states go into every full
    checkpoint."""
    specs = [_callback_spec(c) for c in cfg.get("callbacks") or []]
    callbacks = [build(c, f"callbacks[{i}]") for i, c in enumerate(specs)] + list(extra)
    ckpts = [cb for cb in callbacks if isinstance(cb, pl.callbacks.ModelCheckpoint)]
    if not ckpts:
        monitor = "loss/val" if cfg.get("val_dataset") else None
        ckpts = [RunCheckpoint(monitor=monitor)]
        callbacks.append(ckpts[0])
    for cb in ckpts:
        cb.dirpath = str((run_dir / CHECKPOINTS).resolve())
    ckpts[0].save_last = True  # always, whatever the config says: what a resume needs
    callbacks.append(RNGStateCallback())
    wants_bar = cfg["pl_trainer"].get("enable_progress_bar", True)
    if wants_bar and not any(isinstance(cb, pl.callbacks.ProgressBar) for cb in callbacks):
        callbacks.append(CompactProgressBar())
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


def _plugins(kwargs: dict[str, Any]) -> list[Any]:
    """``pl_trainer.plugins`` built, plus `AtomicCheckpointIO` unless one is a CheckpointIO."""
    spec = kwargs.pop("plugins", None) or []
    plugins = [build(p, f"pl_trainer.plugins[{i}]") for i, p in enumerate(_as_list(spec))]
    if not any(isinstance(p, pl.plugins.CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())
    return plugins


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def build_trainer(
    cfg: Mapping[str, Any],
    run_dir: Path,
    keep_metrics_below_step: int | None = None,
    verbose: bool = True,
    callbacks: Sequence[pl.Callback] = (),
) -> pl.Trainer:
    """``lightning.pytorch.Trainer`` from ``pl_trainer``, with callbacks, `AtomicCheckpointIO`
    and a CSV logger writing ``run_dir/metrics.csv`` (rows from ``keep_metrics_below_step``
    on, those a resumed run logs again, are dropped). Not ``verbose``: no model summary unless
    ``pl_trainer.enable_model_summary`` asks for one."""
    kwargs = dict(cfg["pl_trainer"])
    if not verbose:
        kwargs.setdefault("enable_model_summary", False)
    kwargs["default_root_dir"] = str(run_dir)
    if "logger" not in kwargs:
        kwargs["logger"] = build_logger(cfg.get("logger"), run_dir, keep_metrics_below_step)
    elif cfg.get("logger") is not None:
        raise ConfigError("logger is set both at the top level and in pl_trainer; keep one")
    elif isinstance(kwargs["logger"], Mapping):
        kwargs["logger"] = build(kwargs["logger"], "pl_trainer.logger")
    plugins = _plugins(kwargs)
    built = build_callbacks(cfg, run_dir, callbacks)
    return pl.Trainer(callbacks=built, plugins=plugins, **kwargs)


def _resume_from(cfg: Mapping[str, Any] | None, resume: str | Path | None) -> Resume | None:
    """``resume``, or the config's ``ckpt_path`` (the same thing); both, naming different
    checkpoints: an error."""
    key = (cfg or {}).get("ckpt_path")
    found = resolve_resume(resume) if resume is not None else None
    if key is not None:
        from_key = resolve_resume(key)
        if found is not None and found.checkpoint.resolve() != from_key.checkpoint.resolve():
            raise ConfigError(f"ckpt_path {key} and --resume {resume} differ; give one")
        found = found or from_key
    return found


def _prepare(
    cfg: Mapping[str, Any] | DictConfig | str | Path | None, resume: str | Path | None
) -> tuple[dict[str, Any], Resume | None]:
    """The plain config and what to resume from (``resume=`` or the config's ``ckpt_path``);
    with ``resume`` and no config, the run folder's ``config.yaml``."""
    plain = to_plain_config(cfg) if cfg is not None else None
    found = _resume_from(plain, resume)
    if plain is None:
        if found is None or found.run_dir is None:
            raise ConfigError("train: give a config (or resume a run folder, which holds one)")
        plain = to_plain_config(run_config(found.run_dir))
    plain.pop("ckpt_path", None)
    return plain, found


def open_run(cfg: Mapping[str, Any], resume: Resume | None) -> Path:
    """The run folder: the resumed run's, else a new one under ``output_dir``; leftover temps
    of killed runs are removed and the config is written as ``config.yaml``."""
    if os.environ.get("LOCAL_RANK", "0") != "0" and os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])  # a DDP worker: the launching process's run
    output_dir = Path(cfg["output_dir"])
    remove_stale_temp_files(output_dir, recursive=True, min_age_s=STALE_AFTER_S)
    if resume is not None and resume.run_dir is not None:
        run_dir = resume.run_dir
        remove_stale_temp_files(run_dir, recursive=True, min_age_s=STALE_AFTER_S)
    else:
        run_dir = new_run_dir(output_dir)
    write_run_config(run_dir, cfg)
    os.environ[RUN_DIR_ENV] = str(run_dir)
    return run_dir


def train(
    cfg: Mapping[str, Any] | DictConfig | str | Path | None = None,
    resume: str | Path | None = None,
    *,
    verbose: bool | None = None,
    callbacks: Sequence[pl.Callback] = (),
) -> TrainResult:
    """Train from a config in a new run folder, or continue a run: ``resume`` is a run folder
    (its ``checkpoints/last.ckpt``) or a full checkpoint; without ``cfg`` the run's
    ``config.yaml`` is used. Returns the run folder, checkpoints and last validation metrics.
    Lightning's banners, tips and model summary are silenced unless ``verbose`` (default:
    ``$POLYHEAD_VERBOSE``; see `lightning_output`). ``callbacks``: built Lightning callbacks
    added to the config's (not stored in it), e.g. a `polyhead.progress.TrainingProgress`."""
    verbose = verbose_setting(verbose)
    with lightning_output(verbose):
        return _train(cfg, resume, verbose, callbacks)


def _train(
    cfg: Mapping[str, Any] | DictConfig | str | Path | None,
    resume: str | Path | None,
    verbose: bool,
    callbacks: Sequence[pl.Callback] = (),
) -> TrainResult:
    cfg, found = _prepare(cfg, resume)
    pl.seed_everything(cfg["seed"], workers=True, verbose=False)
    datamodule = build_datamodule(cfg)
    task = build_task(cfg, getattr(datamodule.train_dataset, "ignore_index", None))
    check_task(task, datamodule)  # bands and class counts agree, before any run folder exists
    run_dir = open_run(cfg, found)  # once the config has built: no folder for a broken one
    try:
        step = found.global_step if found else None
        trainer = build_trainer(cfg, run_dir, step, verbose, callbacks)
    except Exception:
        if found is None:
            discard_new_run(run_dir)
        raise
    with warnings.catch_warnings():
        # raised inside Lightning's own pytree helper on torch >= 2.10; not actionable here
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* not empty")
        trainer.fit(task, datamodule=datamodule, ckpt_path=found.checkpoint if found else None)
    ckpt = trainer.checkpoint_callback
    best = Path(ckpt.best_model_path) if ckpt is not None and ckpt.best_model_path else None
    last = Path(ckpt.last_model_path) if ckpt is not None and ckpt.last_model_path else None
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    result = TrainResult(
        run_dir, best, last, metrics, resumed_from=found.checkpoint if found else None
    )
    if trainer.world_size == 1:  # in a multi-process run the metrics would sync across ranks
        _report(result, task, datamodule, trainer)
    return result


def _report(result: TrainResult, task: Any, datamodule: Any, trainer: pl.Trainer) -> None:
    """``validation.md``: per-head metrics of the best checkpoint (EMA weights) on the
    validation set, for single-process segmentation runs (what `polyhead demo` prints)."""
    from polyhead.tasks import SegmentationTask

    dataset = datamodule.val_dataset
    n_classes = getattr(dataset, "n_classes", None)
    checkpoint = result.best_checkpoint or result.last_checkpoint
    if not isinstance(task, SegmentationTask) or n_classes is None or checkpoint is None:
        return
    from polyhead.checkpoint import load_checkpoint
    from polyhead.evaluate import evaluate_heads
    from polyhead.runs import write_validation_report

    try:
        model = load_checkpoint(checkpoint).model
    except ConfigError as err:  # e.g. a model outside the loader's allow-list
        warnings.warn(f"validation.md not written: {err}", stacklevel=2)
        return
    device = "cuda" if trainer.strategy.root_device.type == "cuda" else "cpu"
    results = evaluate_heads(
        model,
        dataset,
        n_classes,
        ignore_index=getattr(dataset, "ignore_index", 255),
        device=device,
    )
    result.validation, result.validation_table = write_validation_report(
        result.run_dir, results, checkpoint
    )
