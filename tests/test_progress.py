"""The demo's one-line progress and Lightning's bar at 80 columns."""

from __future__ import annotations

import io

import lightning.pytorch as pl
import pytest
import rich
import torch
from rich.console import Console

from polyhead.progress import (
    CompactProgressBar,
    RunProgress,
    TrainingProgress,
    compact_metrics,
    short_metric_name,
    time_left,
)


def test_short_metric_names() -> None:
    assert short_metric_name("loss/train_step") == "loss"
    assert short_metric_name("loss/val") == "val"
    assert short_metric_name("val/mIoU") == "mIoU"
    assert short_metric_name("val/A/mIoU") == "A mIoU"
    assert short_metric_name("loss/train_epoch") is None
    assert short_metric_name("v_num") is None


def test_compact_metrics_keeps_what_fits_in_order() -> None:
    metrics = {"v_num": 3, "loss/train_step": 0.41234, "loss/val": 0.3811, "val/mIoU": 0.7123}
    shown = compact_metrics(metrics, width=40)
    assert shown == {"loss": "0.412", "mIoU": "0.712", "val": "0.381"}
    assert list(shown) == ["loss", "mIoU", "val"]
    assert compact_metrics(metrics, width=30) == {"loss": "0.412", "mIoU": "0.712"}


def test_time_left() -> None:
    assert time_left(30.0, 0.25) == "1:30"
    assert time_left(10.0, 0.0) == "?"
    assert time_left(10.0, 1.0) == "0:00"


class _Toy(pl.LightningModule):
    """Logs long metric names to the progress bar, as the segmentation task does."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("loss/train", loss, prog_bar=True, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("loss/val", loss, prog_bar=True)
        for name in ("val/mIoU", "val/A/mIoU", "val/B/mIoU", "val/pixel_accuracy"):
            self.log(name, 0.123456, prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _loader() -> torch.utils.data.DataLoader:
    data = torch.utils.data.TensorDataset(torch.randn(16, 4))
    return torch.utils.data.DataLoader(data, batch_size=4)


def _fit(callbacks: list[pl.Callback], **kwargs) -> None:
    kwargs.setdefault("max_epochs", 2)
    trainer = pl.Trainer(
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        accelerator="cpu",
        **kwargs,
    )
    trainer.fit(_Toy(), _loader(), _loader())


class _Probe(pl.Callback):
    """Renders the bar's live table at 80 columns after every batch."""

    def __init__(self, bar: CompactProgressBar) -> None:
        self.bar = bar
        self.renders: list[tuple[int, list[str]]] = []

    def _render(self) -> None:
        progress = self.bar.progress
        if progress is None:
            return
        console = Console(width=80, record=True, file=io.StringIO())
        console.print(progress.get_renderable())
        visible = sum(task.visible for task in progress.tasks)
        self.renders.append((visible, console.export_text().splitlines()))

    def on_train_batch_end(self, *args) -> None:
        self._render()

    def on_validation_batch_end(self, *args) -> None:
        self._render()


def test_lightning_bar_fits_80_columns() -> None:
    """Every live render: one line per bar (nothing wrapped), the metrics shown short."""
    saved = rich.get_console()
    bar = CompactProgressBar(console_kwargs={"file": io.StringIO()})
    probe = _Probe(bar)
    try:
        _fit([bar, probe], max_epochs=10)
    finally:
        rich._console = saved  # RichProgressBar reconfigures the global console
    assert len(probe.renders) > 40
    for visible, lines in probe.renders:
        assert len(lines) == visible, lines
        assert max(len(line) for line in lines) <= 80
    last = probe.renders[-1][1]
    assert any(line.startswith("epoch 10/10") for line in last), last
    assert any("loss: " in line and "mIoU: 0.123" in line for line in last), last
    assert all("v_num" not in line and "loss/train" not in line for line in last), last


def test_run_progress_one_line_through_training() -> None:
    console = Console(width=80, record=True, file=io.StringIO(), force_terminal=True)
    stages = {"data": 1.0, "training": 8.0, "figures": 1.0}
    with RunProgress(stages, console=console) as run:
        run.stage("data")
        assert run.progress.tasks[0].completed == 0.0
        _fit([TrainingProgress(run)], enable_progress_bar=False)
        task = run.progress.tasks[0]
        assert task.completed == pytest.approx(9.0)
        assert task.description.startswith("training: epoch 2/2, ")
        with run.step("figures"):
            assert run.progress.tasks[0].description == "figures"
        assert run.progress.tasks[0].completed == pytest.approx(10.0)
        with pytest.raises(KeyError, match="unknown stage 'nope'"):
            run.stage("nope")
        run.stage("training", "epoch 12/12, 10:00 left")  # the longest the demo shows
        wide = Console(width=80, record=True, file=io.StringIO())
        wide.print(run.progress.get_renderable())
        assert len(wide.export_text().splitlines()) == 1  # one line, nothing wrapped
    assert len(run.progress.tasks) == 1
