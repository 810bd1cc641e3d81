"""Runs a user can trust: one folder per run, resume (exact after SIGKILL), checkpoints
whole-or-absent, config mistakes refused before training starts."""

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from torch.utils.data import DataLoader, TensorDataset

from polyhead.callbacks import EMACallback, RunCheckpoint
from polyhead.checkpoint_io import AtomicCheckpointIO
from polyhead.cli import main
from polyhead.demo.run import demo_config
from polyhead.errors import ConfigError
from polyhead.io import TEMP_MARKER, WriteError
from polyhead.train import train

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "configs/examples/upernet_dual_head.yaml"

# Trains in a subprocess and SIGKILLs itself when the given global step is about to start.
KILLED_RUN = """
import json, os, signal, sys
import lightning.pytorch as pl
import polyhead.train as T

cfg, kill_at = json.loads(sys.argv[1]), int(sys.argv[2])

class Kill(pl.Callback):
    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

build = T.build_callbacks
T.build_callbacks = lambda *a: [*build(*a), Kill()]
T.train(cfg)
"""


def tiny(data, out: Path, epochs: int = 3) -> dict:
    """2 steps per epoch of a dual-head UPerNet (timm's test ConvNeXt), EMA on, CPU."""
    cfg = demo_config(
        data, out, epochs=3, encoder_name="tu-test_convnext", crop_size=32, samples_per_epoch=8
    )
    cfg["output_dir"] = str(out)
    cfg["model"]["decoder_channels"] = 16
    cfg["train_dataset"]["data_loader"]["batch_size"] = 4
    cfg["pl_trainer"].update(
        max_epochs=epochs, enable_progress_bar=False, log_every_n_steps=1, num_sanity_val_steps=1
    )
    return cfg


def runs(output_dir: Path) -> list[Path]:
    return sorted(output_dir.glob("run-*"))


def flat(tree, prefix=""):
    """(path, leaf) pairs of a nested checkpoint."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from flat(v, f"{prefix}/{k}")
    elif isinstance(tree, list | tuple):
        for i, v in enumerate(tree):
            yield from flat(v, f"{prefix}/{i}")
    else:
        yield prefix, tree


def test_killed_run_resumes_to_the_same_weights(synthetic, tmp_path):
    """SIGKILL in epoch 2 (of 0..2), then ``--resume``: every tensor of the final last.ckpt
    (EMA and training weights, AdamW state, RNG states) equals the uninterrupted run's
    exactly, and so does metrics.csv."""
    whole = train(tiny(synthetic, tmp_path / "whole"))

    cfg = tiny(synthetic, tmp_path / "killed")
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUN, json.dumps(cfg), "5"],  # step 5: epoch 2, batch 2
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())},
    )
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, stderr[-3000:]
    (run,) = runs(tmp_path / "killed")
    last = run / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 4  # end of epoch 1
    leftover = last.with_name(f".last.ckpt{TEMP_MARKER}{proc.pid}-0123abcd")  # a cut write
    leftover.write_bytes(b"partial")
    os.utime(leftover, (0, 0))

    assert main(["train", "--resume", str(run)]) == 0
    assert runs(tmp_path / "killed") == [run] and not leftover.exists()
    got = dict(flat(torch.load(last, weights_only=False)))
    want = dict(flat(torch.load(whole.last_checkpoint, weights_only=False)))
    # every tensor but the checkpoint callback's (its scores are keyed by path)
    tensors = [k for k, v in want.items() if isinstance(v, torch.Tensor) and "Checkpoint{" not in k]
    assert len(tensors) > 100 and any("training_weights" in k for k in tensors)
    assert any("optimizer_states" in k for k in tensors) and any("RNGState" in k for k in tensors)
    assert all(torch.equal(got[k], want[k]) for k in tensors)
    assert (run / "metrics.csv").read_text() == (whole.run_dir / "metrics.csv").read_text()


@pytest.fixture(scope="module")
def finished(synthetic, tmp_path_factory):
    """A finished 1-epoch run through the CLI: (output_dir, YAML config)."""
    out = tmp_path_factory.mktemp("runs")
    config = out / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny(synthetic, out / "outputs", epochs=1)))
    assert main(["train", "--config", str(config)]) == 0
    return out / "outputs", config


def test_one_folder_per_run_and_resume_with_more_epochs(finished, capsys):
    out, config = finished
    run = runs(out)[0]
    ckpts = run / "checkpoints"
    assert {p.name for p in run.iterdir()} == {
        "config.yaml",
        "checkpoints",
        "metrics.csv",
        "validation.md",
    }
    assert yaml.safe_load((run / "config.yaml").read_text())["pl_trainer"]["max_epochs"] == 1
    assert "| average |" in (run / "validation.md").read_text()
    last = torch.load(ckpts / "last.ckpt", weights_only=False)
    (best_path,) = [p for p in ckpts.glob("*.ckpt") if p.name != "last.ckpt"]
    best = torch.load(best_path, weights_only=False)
    assert {"optimizer_states", "lr_schedulers", "callbacks"} <= set(last)
    assert not {"optimizer_states", "lr_schedulers", "callbacks"} & set(best)
    assert best["polyhead_config"] == last["polyhead_config"]
    for k, v in best["state_dict"].items():  # same epoch: both hold the EMA weights
        assert torch.equal(v, last["state_dict"][k]), k

    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    n = len(runs(out))
    capsys.readouterr()
    assert main(["train", "--config", str(config)]) == 0  # another run: another folder
    printed = capsys.readouterr().out
    assert len(runs(out)) == n + 1
    assert f"run folder:      {runs(out)[-1]}" in printed
    assert "| head | mIoU | pixel accuracy | ECE (15 bins) | KL to soft mask |" in printed
    assert "| average |" in printed
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before

    # a finished run continues with more epochs, in its folder, from its own config.yaml
    assert main(["train", "--resume", str(run), "pl_trainer.max_epochs=2"]) == 0
    assert len(runs(out)) == n + 1
    assert torch.load(ckpts / "last.ckpt", weights_only=False)["epoch"] == 1
    rows = (run / "metrics.csv").read_text().splitlines()
    old = before[run / "metrics.csv"].decode().splitlines()
    assert rows[: len(old)] == old
    assert {r.split(",")[0] for r in rows[1:]} == {"0", "1"}  # epoch 1 appended, none lost


def test_ckpt_path_in_the_config_resumes(finished, tmp_path):
    out, config = finished
    last = runs(out)[-1] / "checkpoints" / "last.ckpt"
    epoch = torch.load(last, weights_only=False)["epoch"]
    n = len(runs(out))
    overrides = [f"+ckpt_path={last}", f"pl_trainer.max_epochs={epoch + 2}"]
    assert main(["train", "--config", str(config), *overrides]) == 0
    assert len(runs(out)) == n  # the same run folder
    assert torch.load(last, weights_only=False)["epoch"] == epoch + 1
    other = tmp_path / "other.ckpt"
    other.write_bytes(last.read_bytes())
    cfg = {**yaml.safe_load(config.read_text()), "ckpt_path": str(last)}
    with pytest.raises(ConfigError, match=r"ckpt_path .* and --resume .* differ; give one"):
        train(cfg, resume=other)


def test_resume_errors_are_one_line(finished, tmp_path, capsys):
    out, _ = finished
    run = runs(out)[0]
    best = next(p for p in (run / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt")
    cases = {
        str(tmp_path): f"--resume {tmp_path}: no checkpoints/last.ckpt in this folder",
        str(out): "runs in it: run-",
        str(best): "a weights-only checkpoint (a best one) cannot resume training",
        str(tmp_path / "nope"): "no such run folder or checkpoint",
    }
    for target, message in cases.items():
        assert main(["train", "--resume", target]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["+val_datset.input_csv_path=x.csv"],
            "unknown config key 'val_datset'; did you mean 'val_dataset'? valid: callbacks,",
        ),
        (["pl_trainer.max_epoch=1"], "unknown pl_trainer argument 'max_epoch'; did you mean "),
        (["+pl_trainer.max_epoch=1"], "'max_epochs'? valid: accelerator, accumulate_grad"),
        (["pl_trainer.max_steps=3"], "add it with a leading +: +pl_trainer.max_steps=3"),
        (["+pl_trainer.resume_from_checkpoint=x"], "resume with polyhead train --resume"),
        (["+pl_trainer.enable_checkpointing=false"], "every run writes checkpoints/last.ckpt"),
    ],
)
def test_config_mistakes_are_refused_before_training(overrides, message, tmp_path, capsys):
    argv = ["train", "--config", str(EXAMPLE), f"output_dir={tmp_path}", *overrides]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not any(tmp_path.iterdir())  # no run folder


def test_config_mistakes_in_the_python_api_and_group_layout(tmp_path, capsys):
    cfg = yaml.safe_load(EXAMPLE.read_text())
    with pytest.raises(ConfigError, match="unknown config key 'val_datset'"):
        train({**cfg, "val_datset": cfg["val_dataset"]})
    with pytest.raises(ConfigError, match="unknown pl_trainer argument 'max_epoch'"):
        train({**cfg, "pl_trainer": {"max_epoch": 1}})
    argv = ["train", "--config-dir", str(REPO / "configs"), "--config-name", "train"]
    assert main([*argv, "experiment=upernet_dual_head", "trainer.max_epoch=1"]) == 2
    assert "unknown trainer argument 'max_epoch'; did you mean 'max_epochs'?" in (
        capsys.readouterr().err
    )


def test_checkpoint_io_is_whole_or_absent(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "optimizer_states": [1]}, path)
    before = path.read_bytes()

    def disk_full(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(WriteError, match="could not write .*last.ckpt"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    monkeypatch.undo()
    slim = tmp_path / "best.ckpt"
    full = {"state_dict": {"w": torch.ones(1)}, "callbacks": {}, "optimizer_states": []}
    io.save_checkpoint(
        {**full, "lr_schedulers": [], "MixedPrecision": {}}, slim, {"weights_only": True}
    )
    assert set(torch.load(slim, weights_only=True)) == {"state_dict"}


class Scored(pl.LightningModule):
    """A linear model whose validation score only gets worse: the best stays at epoch 0."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)

    def training_step(self, batch, _):
        return torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])

    def validation_step(self, batch, _):
        self.log("score", float(self.current_epoch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_last_every_epoch_best_weights_only_with_ema(tmp_path):
    """Lightning >= 2.5 writes last.ckpt only beside a new best; RunCheckpoint every epoch."""
    data = DataLoader(TensorDataset(torch.randn(8, 3), torch.randn(8, 1)), batch_size=4)
    ema = EMACallback(decay=0.5, warmup=False)
    trainer = pl.Trainer(
        max_epochs=3,
        callbacks=[ema, RunCheckpoint(dirpath=tmp_path, monitor="score", mode="min")],
        plugins=[AtomicCheckpointIO()],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(Scored(), data, data)
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)
    best = torch.load(tmp_path / "epoch=0-step=2.ckpt", weights_only=True)
    assert last["epoch"] == 2 and "optimizer_states" in last and best["epoch"] == 0
    assert not {"optimizer_states", "lr_schedulers", "callbacks"} & set(best)
    training = last["callbacks"]["EMACallback"]["training_weights"]["layer.weight"]
    assert torch.equal(last["state_dict"]["layer.weight"], ema.shadow["layer.weight"])
    assert not torch.equal(training, last["state_dict"]["layer.weight"])  # EMA != training
