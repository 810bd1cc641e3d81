"""CLI commands in-process, plus one DDP run (which must spawn processes)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from polyhead.cli import main
from polyhead.demo.run import run_demo

REPO = Path(__file__).resolve().parents[1]


def test_check_data_prints_summary_and_fails_on_bad_rows(synthetic, capsys):
    assert (
        main(["check-data", str(synthetic.train_csv), "--n-classes", "4", "--crop-size", "32"]) == 0
    )
    out = capsys.readouterr().out
    assert "passed every check" in out and "vegetation" not in out  # ids, not names
    rows = synthetic.train_csv.read_text().splitlines()
    # beside the data, since relative paths resolve against the CSV's folder
    bad = synthetic.out_dir / "bad.csv"
    bad.write_text("\n".join([*rows[:2], "scenes/nope.tif,masks/hard/nope.tif,masks/soft/x.tif"]))
    try:
        assert main(["check-data", str(bad), "--n-classes", "4"]) == 2
    finally:
        bad.unlink()
    err = capsys.readouterr().err
    assert "row 2" in err and "nope.tif" in err


def test_check_data_on_a_training_yaml(synthetic_rgb6, capsys):
    assert main(["check-data", str(REPO / "tests/configs/seed_full_example.yaml")]) == 2
    assert "/data/dual_label/train.csv" in capsys.readouterr().err


def test_demo_small_writes_checkpoint_figure_and_table(tmp_path, capsys):
    result = run_demo(tmp_path, n_train=2, n_val=1, size=64, epochs=1)
    assert Path(result["checkpoint"]).is_file() and result["figure"].stat().st_size > 10_000
    assert set(result["metrics"]) == {"A", "B", "average"}
    out = capsys.readouterr().out
    assert "mIoU" in out and "ECE" in out and "KL to soft mask" in out
    assert result["metrics"]["B"]["soft_KL"] > 0


def test_train_with_ddp_on_two_cpu_processes(synthetic_rgb6, tmp_path):
    d = synthetic_rgb6
    cmd = [
        sys.executable,
        "-m",
        "polyhead",
        "train",
        "--config",
        str(REPO / "configs/examples/upernet_dual_head.yaml"),
        f"train_dataset.input_csv_path={d.train_csv}",
        f"val_dataset.input_csv_path={d.val_csv}",
        "model.encoder_weights=null",
        "model.encoder_name=tu-test_convnext",
        "model.decoder_channels=16",
        "train_dataset.crop_size=32",
        "val_dataset.crop_size=32",
        "train_dataset.samples_per_epoch=8",
        "train_dataset.data_loader.batch_size=2",
        "train_dataset.data_loader.num_workers=0",
        "val_dataset.data_loader.num_workers=0",
        f"output_dir={tmp_path}",
        "pl_trainer.max_epochs=1",
        "pl_trainer.accelerator=cpu",
        "pl_trainer.devices=2",
        "+pl_trainer.strategy=ddp",
        "+pl_trainer.max_steps=2",
        "+pl_trainer.limit_val_batches=1",
        "+pl_trainer.enable_progress_bar=false",
        "--verbose",  # Lightning's DDP start-up lines, checked below
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "distributed_backend=gloo" in log and "All distributed processes registered" in log
    assert len(list(tmp_path.glob("run-*"))) == 1  # both processes write into one run folder
    assert list(tmp_path.glob("run-*/checkpoints/*.ckpt"))


@pytest.mark.parametrize("argv", [["train"], ["predict", "x.ckpt", "img.tif", "-o", "out"]])
def test_cli_errors_are_short(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert "error" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("env", "many"),
    [
        ({}, False),
        ({"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "4"}, False),
        ({"WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4"}, True),
        ({"SLURM_NNODES": "2"}, True),
        ({"NODE_RANK": "1"}, True),
    ],
)
def test_leftovers_are_kept_in_a_job_over_several_machines(env, many, monkeypatch):
    from polyhead.cli import _one_of_many_machines

    for key in ("WORLD_SIZE", "LOCAL_WORLD_SIZE", "SLURM_NNODES", "NODE_RANK", "GROUP_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert _one_of_many_machines() is many
