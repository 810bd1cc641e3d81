"""The demo end to end at toy size: Dawid-Skene soft masks, metrics vs truth, the figure."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
from rich.console import Console

from polyhead.checkpoint import load_checkpoint
from polyhead.demo.run import run_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    console = Console(width=80, record=True, file=io.StringIO())
    out = tmp_path_factory.mktemp("demo")
    result = run_demo(
        out, n_train=2, n_val=1, size=64, epochs=1, console=console, crop_size=64,
        samples_per_epoch=8,
    )  # fmt: skip
    return result, console.export_text()


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_trains_on_majority_vote_and_dawid_skene_masks(demo) -> None:
    result, _ = demo
    root = result["data"].out_dir
    train = _rows(root / "demo_train.csv")
    assert [r["mask"] for r in train] == ["masks/hard/scene_000.tif", "masks/hard/scene_001.tif"]
    assert all(r["soft_mask"].startswith("dawid_skene/soft/") for r in train)
    assert [r["mask"] for r in _rows(root / "demo_truth.csv")] == ["truth/scene_002.tif"]
    cfg = load_checkpoint(result["checkpoint"]).config
    assert cfg["train_dataset"]["input_csv_path"] == str(root / "demo_train.csv")
    assert [c["name"] for c in cfg["classes"]] == ["background", "water", "vegetation", "building"]
    assert cfg["classes"][1]["color"] == [43, 108, 196]


def test_one_checkpoint_written_without_optimizer_bloat(demo) -> None:
    result, _ = demo
    files = sorted(p.name for p in (result["run_dir"] / "checkpoints").iterdir())
    assert files == ["last.ckpt"]
    state = torch.load(result["checkpoint"], map_location="cpu", weights_only=True)
    assert state["epoch"] == 0 and "state_dict" in state


def test_metrics_against_truth_and_hard_mask(demo) -> None:
    result, text = demo
    truth, hard = result["metrics"], result["metrics_vs_hard_mask"]
    assert set(truth) == set(hard) == {"A", "B", "average"}
    for head in truth:
        assert 0.0 <= float(truth[head]["ECE"]) <= 1.0
        assert "soft_KL" in truth[head]
    # the truth and the majority vote differ, so do the scores against them
    assert any(float(truth[h]["ECE"]) != float(hard[h]["ECE"]) for h in truth)
    header = next(line for line in text.splitlines() if "head" in line and "mIoU" in line)
    for name in ("mIoU vs truth", "ECE vs truth", "ECE vs hard mask", "KL to soft mask"):
        assert name in header  # whole, not wrapped, at 80 columns
    assert max(len(line) for line in text.splitlines()) <= 80
    assert set(result["seconds"]) == {"data", "aggregation", "training", "evaluation", "figures"}


def test_figure_has_truth_column_and_row_label(demo) -> None:
    result, _ = demo
    png = mpimg.imread(result["figure"])
    from polyhead.demo.figures import caption_lines, figure_pixel_size

    # 7 panels of 256 px (image, truth, hard, soft, A, B, average), a row label, a caption
    width = figure_pixel_size(1, 7, 256, row_labels=True)[0]
    assert png.shape[1] == width
    assert png.shape[0] > figure_pixel_size(1, 7, 256, row_labels=True)[0] // 7
    assert len(caption_lines("x " * 200, width, 9.0)) > 1
    assert np.std(png[..., :3]) > 0.05
