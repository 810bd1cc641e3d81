"""Application layer: one folder per training run, resuming one, its metrics log and report.

A run folder (``output_dir/run-YYYYmmdd-HHMMSS[-N]``, never reused by a new run) holds::

    config.yaml             the resolved flat config the run trained with
    checkpoints/last.ckpt   full state (weights, EMA, optimizer, scheduler, loops, RNG): resume
    checkpoints/<best>.ckpt the monitored best, weights only (EMA weights when EMA runs)
    metrics.csv             Lightning's CSV log; a resumed run appends to it
    validation.md           per-head validation table of the best checkpoint (segmentation)

Every file is written through `polyhead.io` (temp beside the target, then renamed).
"""

from __future__ import annotations

import csv
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.core.saving import save_hparams_to_yaml
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from omegaconf import OmegaConf

from polyhead.errors import ConfigError
from polyhead.io import atomic_write, write_csv, write_text

RUN_PREFIX = "run-"
CONFIG_FILE = "config.yaml"
CHECKPOINTS = "checkpoints"
LAST = "last.ckpt"
METRICS_FILE = "metrics.csv"
REPORT_FILE = "validation.md"


def new_run_dir(output_dir: str | Path, now: float | None = None) -> Path:
    """Create and return a fresh ``output_dir/run-YYYYmmdd-HHMMSS[-N]`` (never an existing one)."""
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    for n in range(1, 10_000):
        path = root / f"{RUN_PREFIX}{stamp}{'' if n == 1 else f'-{n}'}"
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise ConfigError(f"output_dir {root}: too many runs started at {stamp}")


def discard_new_run(run_dir: Path) -> None:
    """Remove a run folder this process just made when its trainer could not be built (it
    holds only ``config.yaml``); anything else in it stays."""
    (Path(run_dir) / CONFIG_FILE).unlink(missing_ok=True)
    try:
        Path(run_dir).rmdir()
    except OSError:
        pass


def list_runs(output_dir: str | Path) -> list[Path]:
    """The run folders under ``output_dir``, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(RUN_PREFIX))


@dataclass
class Resume:
    """Where a resumed run continues: its folder, the checkpoint and that checkpoint's step."""

    run_dir: Path | None  # None: the checkpoint is in no run folder; the run gets a new one
    checkpoint: Path
    global_step: int


def _peek(path: Path) -> dict[str, Any]:
    """A checkpoint's top level, memory-mapped (the tensors are not read)."""
    from polyhead.checkpoint import SAFE_TYPES  # paths a run config may hold

    try:
        with torch.serialization.safe_globals(list(SAFE_TYPES)):
            return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as err:
        raise ConfigError(f"--resume {path}: cannot read this checkpoint: {err}") from None


def resolve_resume(target: str | Path) -> Resume:
    """``--resume RUN_DIR_OR_CKPT``: a run folder (its ``checkpoints/last.ckpt``) or a full
    checkpoint. Raises a one-line `ConfigError` when there is nothing to resume from."""
    path = Path(target)
    if path.is_dir():
        ckpt = next((c for c in (path / CHECKPOINTS / LAST, path / LAST) if c.is_file()), None)
        if ckpt is None:
            runs = [p.name for p in list_runs(path)]
            hint = f"; runs in it: {', '.join(runs[-5:])}" if runs else ""
            raise ConfigError(f"--resume {path}: no {CHECKPOINTS}/{LAST} in this folder{hint}")
    elif path.is_file():
        ckpt = path
    else:
        raise ConfigError(f"--resume {path}: no such run folder or checkpoint")
    state = _peek(ckpt)
    if "optimizer_states" not in state:
        raise ConfigError(
            f"--resume {ckpt}: a weights-only checkpoint (a best one) cannot resume training; "
            f"give the run folder or its {CHECKPOINTS}/{LAST}"
        )
    run_dir = ckpt.parent.parent if ckpt.parent.name == CHECKPOINTS else ckpt.parent
    if not (run_dir / CONFIG_FILE).is_file():
        run_dir = None
    return Resume(run_dir, ckpt, int(state.get("global_step", 0)))


def run_config(run_dir: Path) -> Path:
    """The ``config.yaml`` of a run folder (a one-line error when it is missing)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no {CONFIG_FILE}; give the config with --config")
    return path


def write_run_config(run_dir: Path, cfg: Mapping[str, Any]) -> Path:
    """Write the resolved config as ``config.yaml``."""
    return write_text(Path(run_dir) / CONFIG_FILE, OmegaConf.to_yaml(OmegaConf.create(dict(cfg))))


class _RunMetricsWriter(ExperimentWriter):
    """Lightning's CSV writer that keeps an earlier ``metrics.csv`` (rows before
    ``keep_below_step``) and rewrites the whole file atomically at each save."""

    def __init__(self, log_dir: str, keep_below_step: int | None = None) -> None:
        self.rows: list[dict[str, Any]] = []
        super().__init__(log_dir=log_dir)
        path = Path(self.metrics_file_path)
        if path.is_file():
            with open(path, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                self.metrics_keys = list(reader.fieldnames or [])
                self.rows = [r for r in reader if _before(r, keep_below_step)]

    def _check_log_dir_exists(self) -> None:
        """Never delete an earlier run's (or this run's earlier) metrics."""

    def save(self) -> None:
        if not self.metrics:
            return
        self._record_new_keys()
        self.rows += self.metrics
        self.metrics = []
        keys = self.metrics_keys
        write_csv(self.metrics_file_path, keys, ([r.get(k, "") for k in keys] for r in self.rows))

    def log_hparams(self, params: dict[str, Any]) -> None:
        self.hparams.update(params)
        with atomic_write(Path(self.log_dir) / self.NAME_HPARAMS_FILE) as tmp:
            save_hparams_to_yaml(tmp, self.hparams)


def _before(row: Mapping[str, str], step: int | None) -> bool:
    try:
        return step is None or int(float(row.get("step") or 0)) < step
    except ValueError:
        return True


class RunCSVLogger(CSVLogger):
    """`CSVLogger` writing ``run_dir/metrics.csv`` through `polyhead.io`, appending on resume
    (rows logged after the resumed checkpoint's step are dropped) and flushed with every
    checkpoint, so the log on disk always covers the checkpoints beside it."""

    def __init__(self, run_dir: str | Path, keep_below_step: int | None = None, **kwargs: Any):
        super().__init__(str(run_dir), name="", version="", **kwargs)
        self._keep_below_step = keep_below_step

    @property
    @rank_zero_experiment
    def experiment(self) -> _RunMetricsWriter:
        if self._experiment is None:
            self._experiment = _RunMetricsWriter(self.log_dir, self._keep_below_step)
        return self._experiment

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        self.save()


#: columns of the per-head validation table: (title, metric key)
REPORT_COLUMNS = (
    ("mIoU", "mIoU"),
    ("pixel accuracy", "pixel_accuracy"),
    ("ECE (15 bins)", "ECE"),
    ("KL to soft mask", "soft_KL"),
)


def report_rows(results: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the per-head table of `polyhead.evaluate.evaluate_heads` results
    (a column only when every head has that metric)."""
    cols = [(t, k) for t, k in REPORT_COLUMNS if all(k in m for m in results.values())]
    header = ["head", *(t for t, _ in cols)]
    rows = [[head, *(f"{float(m[k]):.3f}" for _, k in cols)] for head, m in results.items()]
    return header, rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines) + "\n"


def write_validation_report(
    run_dir: Path, results: Mapping[str, Mapping[str, Any]], checkpoint: Path
) -> tuple[Path, str]:
    """Write ``validation.md`` (the per-head table of ``checkpoint``); returns it and the table."""
    header, rows = report_rows(results)
    table = markdown_table(header, rows)
    text = f"# Validation per head\n\ncheckpoint: `{checkpoint}`\n\n{table}"
    return write_text(Path(run_dir) / REPORT_FILE, text), table
