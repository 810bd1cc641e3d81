"""Progress display: one line for a whole multi-stage job, Lightning's bar in 80 columns,
and Lightning's start-up chatter silenced unless verbose (`lightning_output`).

`RunProgress` is one rich bar over weighted stages (data, aggregation, training, evaluation,
figures); `TrainingProgress` is the Lightning callback that moves it through the training
stage ("training epoch 3/6, 0:40 left"). `CompactProgressBar` is Lightning's
`RichProgressBar` with a narrower bar and short metric names (``loss 0.41 val 0.38 mIoU
0.71``), so a training line fits an 80-column terminal.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import lightning.pytorch as pl
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

#: ``1`` (``polyhead --verbose``): Lightning's banners, tips and model summary are shown
VERBOSE_ENV = "POLYHEAD_VERBOSE"
#: Lightning's loggers, quiet below WARNING unless verbose (``rank_zero`` may carry its own level)
LIGHTNING_LOGGERS = (
    "lightning.pytorch",
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric",
    "lightning.fabric.utilities.rank_zero",
)
#: Lightning warnings about settings that are fine as they are (a short epoch), unless verbose
QUIET_WARNINGS = (r"The number of training batches \(\d+\) is smaller than the logging interval",)

#: longest metrics text `CompactProgressBar` shows (the rest of 80 columns is the bar)
METRICS_WIDTH = 30
#: width of the bar itself in `CompactProgressBar` and `RunProgress`
BAR_WIDTH = 12


def short_metric_name(name: str) -> str | None:
    """The progress-bar name of a logged metric; None: not shown.

    ``loss/train_step`` -> ``loss``, ``loss/val`` -> ``val``, ``val/mIoU`` -> ``mIoU``,
    ``val/A/mIoU`` -> ``A mIoU``; ``v_num`` and epoch means (``*_epoch``) are left out.
    """
    if name == "v_num" or name.endswith("_epoch"):
        return None
    name = name.removesuffix("_step")
    if name == "loss/train":
        return "loss"
    if name.startswith("loss/"):
        return name.removeprefix("loss/")
    parts = name.split("/")
    if parts[0] in ("val", "train", "test") and len(parts) > 1:
        parts = parts[1:]
    return " ".join(parts)


def compact_metrics(metrics: Mapping[str, Any], width: int = METRICS_WIDTH) -> dict[str, Any]:
    """Metrics renamed by `short_metric_name`, values as 3-decimal strings: the training loss
    first, then mIoU, then the rest, as many as fit in ``width`` characters of ``name: value``
    separated by spaces."""
    named = [(short_metric_name(str(k)), v) for k, v in metrics.items()]
    named = [(k, v) for k, v in named if k is not None]
    named.sort(key=lambda kv: (kv[0] != "loss", "mIoU" not in kv[0]))  # stable: else as logged
    out: dict[str, Any] = {}
    used = 0
    for short, value in named:
        if short in out:
            continue
        text = f"{value:.3f}" if isinstance(value, float | int) else str(value)
        cost = len(short) + 2 + len(text) + (1 if out else 0)
        if used + cost > width:
            break
        out[short] = text
        used += cost
    return out


class CompactProgressBar(pl.callbacks.RichProgressBar):
    """`RichProgressBar` that fits 80 columns: a 16-character bar, no speed column, and the
    metrics of `compact_metrics` (``loss``, ``val``, ``mIoU``; at most `METRICS_WIDTH`)."""

    def __init__(self, *args: Any, metrics_width: int = METRICS_WIDTH, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.metrics_width = metrics_width

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        return compact_metrics(super().get_metrics(trainer, pl_module), self.metrics_width)

    def configure_columns(self, trainer: pl.Trainer) -> list:
        from lightning.pytorch.callbacks.progress.rich_progress import (
            BatchesProcessedColumn,
            CustomBarColumn,
            CustomTimeColumn,
        )

        return [
            TextColumn("[progress.description]{task.description}"),
            CustomBarColumn(
                bar_width=BAR_WIDTH,
                complete_style=self.theme.progress_bar,
                finished_style=self.theme.progress_bar_finished,
                pulse_style=self.theme.progress_bar_pulse,
            ),
            BatchesProcessedColumn(style=self.theme.batch_progress),
            CustomTimeColumn(style=self.theme.time),
        ]

    def _get_train_description(self, current_epoch: int) -> str:
        # "Epoch 3/9" counts from 0 in Lightning; people count epochs from 1
        total = self.trainer.max_epochs
        return f"epoch {current_epoch + 1}" + (f"/{total}" if total and total > 0 else "")


class RunProgress:
    """One progress line for a job of weighted stages.

    ``stages`` maps each stage name to its share of the bar (e.g. expected seconds). Use
    ``with progress:``; `stage` names the current stage (completing the previous ones),
    `fraction` sets how far the current stage is, `detail` adds text after its name.
    """

    def __init__(
        self, stages: Mapping[str, float], console: Console | None = None, enabled: bool = True
    ) -> None:
        if not stages or any(w <= 0 for w in stages.values()):
            raise ValueError(f"stages need positive weights, got {dict(stages)}")
        self.weights = dict(stages)
        self.total = float(sum(self.weights.values()))
        self.current: str | None = None
        self.started: dict[str, float] = {}
        self.ended: dict[str, float] = {}
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=BAR_WIDTH),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=not enabled,
        )
        self.task = self.progress.add_task("starting", total=self.total)

    def __enter__(self) -> RunProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.progress.update(self.task, completed=self.total, description="done")
        if self.current is not None:
            self.ended.setdefault(self.current, time.perf_counter())
        self.progress.stop()

    def durations(self) -> dict[str, float]:
        """Seconds each stage took (from its `stage` call to the next, or to the end)."""
        return {n: self.ended.get(n, time.perf_counter()) - t for n, t in self.started.items()}

    def _done_before(self, name: str) -> float:
        names = list(self.weights)
        return sum(self.weights[n] for n in names[: names.index(name)])

    def stage(self, name: str, detail: str = "") -> None:
        """Start stage ``name``: every stage before it counts as done."""
        if name not in self.weights:
            raise KeyError(f"unknown stage {name!r}; stages: {list(self.weights)}")
        now = time.perf_counter()
        if self.current is not None and self.current != name:
            self.ended.setdefault(self.current, now)
        self.started.setdefault(name, now)
        self.current = name
        self.progress.update(
            self.task, completed=self._done_before(name), description=self._describe(detail)
        )

    def fraction(self, done: float, detail: str = "") -> None:
        """The current stage is ``done`` (0..1) through; ``detail`` follows its name."""
        if self.current is None:
            raise RuntimeError("RunProgress.fraction before any stage")
        done = min(max(done, 0.0), 1.0)
        completed = self._done_before(self.current) + done * self.weights[self.current]
        self.progress.update(self.task, completed=completed, description=self._describe(detail))

    def _describe(self, detail: str) -> str:
        return f"{self.current}: {detail}" if detail else str(self.current)

    @contextmanager
    def step(self, name: str, detail: str = "") -> Iterator[None]:
        """``with progress.step("figures"):`` the stage, filled when the block ends."""
        self.stage(name, detail)
        yield
        self.fraction(1.0, detail)


def time_left(elapsed: float, done: float) -> str:
    """``m:ss`` left when a fraction ``done`` took ``elapsed`` seconds (``?`` at 0)."""
    if done <= 0:
        return "?"
    left = max(0.0, elapsed * (1.0 - done) / done)
    return f"{int(left // 60)}:{int(left % 60):02d}"


class TrainingProgress(pl.Callback):
    """Moves a `RunProgress` through its ``stage`` while Lightning trains: per batch, with
    ``epoch X/N, m:ss left`` (time left for training, from the batches done so far)."""

    def __init__(self, progress: RunProgress, stage: str = "training") -> None:
        self.run = progress
        self.stage_name = stage
        self._start = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()
        self.run.stage(self.stage_name, f"epoch 1/{trainer.max_epochs}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        per_epoch = trainer.num_training_batches or 1
        epochs = max(int(trainer.max_epochs or 1), 1)
        done = (trainer.current_epoch + (batch_idx + 1) / per_epoch) / epochs
        left = time_left(time.perf_counter() - self._start, done)
        detail = f"epoch {trainer.current_epoch + 1}/{epochs}, {left} left"
        self.run.fraction(done, detail)


def verbose_setting(verbose: bool | None) -> bool:
    """``verbose``, or when None whether ``$POLYHEAD_VERBOSE`` is set (and not 0)."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0") if verbose is None else verbose


@contextmanager
def lightning_output(verbose: bool | None = None) -> Iterator[None]:
    """Within: Lightning's start-up banners (GPU/TPU available), tips, model summary and
    `QUIET_WARNINGS` silenced, unless ``verbose`` (default: ``$POLYHEAD_VERBOSE`` set, not 0);
    its warnings and errors always show. Logger levels are restored on exit."""
    verbose = verbose_setting(verbose)
    loggers = [logging.getLogger(name) for name in LIGHTNING_LOGGERS]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        if not verbose:
            for message in QUIET_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
        for logger in loggers:
            logger.setLevel(logging.INFO if verbose else logging.WARNING)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)
