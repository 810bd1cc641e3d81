"""The distillation example configs train as written (only paths and sizes overridden)."""

from pathlib import Path

import pytest

from polyhead.checkpoint import load_checkpoint
from polyhead.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("name", "target"), [("distill_student", "entropy"), ("distill_thread_recipe", "std_per_class")]
)
def test_example_config_trains_a_student(name, target, tiny_targets, tmp_path):
    _, distill_csv = tiny_targets
    overrides = [
        f"train_dataset.input_csv_path={distill_csv}",
        f"val_dataset.input_csv_path={distill_csv}",
        "train_dataset.crop_size=32",
        "val_dataset.crop_size=32",
        "train_dataset.samples_per_epoch=8",
        "train_dataset.data_loader.batch_size=4",
        "train_dataset.data_loader.num_workers=0",
        "val_dataset.data_loader.num_workers=0",
        f"output_dir={tmp_path}",
        "pl_trainer.max_epochs=1",
        "pl_trainer.accelerator=cpu",
        "+pl_trainer.limit_val_batches=1",
        "+pl_trainer.enable_progress_bar=false",
        "+pl_trainer.enable_model_summary=false",
        "+pl_trainer.log_every_n_steps=1",
    ]
    config = REPO / "configs" / "examples" / f"{name}.yaml"
    assert main(["train", "--config", str(config), *overrides]) == 0
    (last,) = tmp_path.glob("run-*/checkpoints/last.ckpt")  # the run's own folder
    model = load_checkpoint(last).model
    assert model.heads["unc"].uncertainty_target == target  # the head owns what it predicts
