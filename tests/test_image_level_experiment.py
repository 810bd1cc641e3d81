"""The synthetic three-head experiment (two pixel heads, one image-level head) trains."""

import csv
from pathlib import Path

import torch

from polyhead.checkpoint import load_model
from polyhead.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_three_head_experiment_trains_one_tiny_step(synthetic, tmp_path, capsys):
    argv = [
        "train",
        "--config-dir",
        str(CONFIGS),
        "--config-name",
        "train",
        "experiment=synthetic/three_heads",
        f"data.train_dataset.input_csv_path={synthetic.train_csv}",
        f"data.val_dataset.input_csv_path={synthetic.val_csv}",
        "data.train_dataset.crop_size=32",
        "data.train_dataset.samples_per_epoch=4",
        "data.batch_size=2",
        "++trainer.max_epochs=1",
        "++trainer.limit_train_batches=2",
        "++trainer.limit_val_batches=2",
        "++trainer.num_sanity_val_steps=0",
        "++trainer.log_every_n_steps=1",
        f"output_dir={tmp_path}",
    ]
    assert main(argv) == 0, capsys.readouterr().err
    run = next(tmp_path.glob("run-*"))
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    logged = {k for row in rows for k, v in row.items() if v not in ("", None)}
    for key in (
        "loss/train/cover",
        "balance/A",
        "balance/cover",
        "balance/consistency",
        "val/cover/MAE",
        "val/cover/R2",
        "val/A/mIoU",
        "val/B/mIoU",
    ):
        assert key in logged, key
    model, _ = load_model(run / "checkpoints" / "last.ckpt")
    assert model.image_level_heads() == ["cover"] and model.class_map_heads() == ["A", "B"]
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert "criterion.balancer.log_vars.cover" in ckpt["state_dict"]
