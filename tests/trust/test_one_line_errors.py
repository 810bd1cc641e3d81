"""A user's mistake ends as one line on stderr and exit code 2; --debug shows the traceback;
a full disk leaves no file under a final name (the issue "Runs a user can trust")."""

import pytest

from polyhead.cli import main

from .conftest import write_scene


def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"polyhead {command}: error: ") and "\n" not in err, err
    return err


def test_unknown_head_is_one_line_naming_the_valid_heads(trained_dual, tmp_path, capsys):
    scene = write_scene(tmp_path / "x.tif", size=64)
    out = tmp_path / "out"
    assert main(["predict", str(trained_dual), str(scene), "-o", str(out), "--head", "C"]) == 2
    err = _one_line_error(capsys, "predict")
    assert "'C' is not a head" in err and "['A', 'B', 'average']" in err
    assert not out.exists()


def test_output_that_is_a_file(conv_checkpoint, tmp_path, capsys):
    scene = write_scene(tmp_path / "x.tif", size=64)
    taken = tmp_path / "taken.tif"
    taken.write_bytes(b"not a folder")
    assert main(["predict", str(conv_checkpoint), str(scene), "-o", str(taken)]) == 2
    assert "is a file; give a folder" in _one_line_error(capsys, "predict")
    assert taken.read_bytes() == b"not a folder"


def test_debug_shows_the_traceback(conv_checkpoint, tmp_path):
    scene = write_scene(tmp_path / "x.tif", size=64)
    taken = tmp_path / "taken.tif"
    taken.write_bytes(b"")
    with pytest.raises(Exception, match="is a file"):
        main(["predict", str(conv_checkpoint), str(scene), "-o", str(taken), "--debug"])


def _final_files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_predict_into_a_full_disk(conv_checkpoint, small_disk, tmp_path, capsys):
    disk = small_disk("256k")
    scene = write_scene(tmp_path / "scene.tif", size=512)  # 3 MiB of float32 probabilities
    argv = ["predict", str(conv_checkpoint), str(scene), "-o", str(disk / "out")]
    assert main([*argv, "--probabilities", "--tile-size", "128", "--overlap", "0"]) == 2
    err = _one_line_error(capsys, "predict")
    assert "scene_" in err  # names the file that could not be written
    assert _final_files(disk) == []  # no class map, no probabilities, no temp file


def test_aggregate_into_a_full_disk(synthetic, small_disk, capsys):
    disk = small_disk("16k")
    argv = ["aggregate", str(synthetic.annotator_csv), "--out", str(disk / "agg")]
    assert main([*argv, "--n-classes", "4", "--no-progress"]) == 2
    _one_line_error(capsys, "aggregate")
    assert _final_files(disk) == []


def test_distill_targets_into_a_full_disk(conv_checkpoint, synthetic, small_disk, capsys):
    disk = small_disk("16k")
    argv = ["distill-targets", "--teacher", str(conv_checkpoint), str(conv_checkpoint)]
    argv += ["--csv", str(synthetic.train_csv), "--out", str(disk / "targets")]
    assert main([*argv, "--tile-size", "32", "--overlap", "0"]) == 2
    _one_line_error(capsys, "distill-targets")
    assert _final_files(disk) == []


def test_demo_into_a_full_disk(small_disk, capsys):
    disk = small_disk("64k")
    argv = ["demo", "--out", str(disk / "demo"), "--scenes", "2", "--size", "64", "--epochs", "1"]
    assert main(argv) == 2
    _one_line_error(capsys, "demo")
    assert _final_files(disk) == []


def test_leftovers_of_a_killed_run_are_removed_by_the_next(conv_checkpoint, tmp_path, capsys):
    import subprocess
    import sys

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(dead.stdout)
    out = tmp_path / "out"
    out.mkdir()
    left = out / f".x_classes.tif.polyhead.partial-{pid}-0123abcd"
    left.write_bytes(b"half a raster")
    staged = tmp_path / f".out.polyhead.partial-{pid}-89abcdef"
    staged.mkdir()
    mine = out / f".y.polyhead.partial-{__import__('os').getpid()}-0123abcd"
    mine.write_bytes(b"a live process's temp")
    scene = write_scene(tmp_path / "x.tif", size=64)
    assert main(["predict", str(conv_checkpoint), str(scene), "-o", str(out)]) == 0
    assert not left.exists() and not staged.exists() and mine.exists()
    assert "left by a killed run" in capsys.readouterr().err


def test_train_into_a_full_disk(synthetic, small_disk, tmp_path, capsys):
    """A checkpoint that does not fit: exit 2, one line, no checkpoint under a final name."""
    from omegaconf import OmegaConf

    from polyhead.demo.run import demo_config

    disk = small_disk("2m")  # room for the run's config and metrics, not for a checkpoint
    cfg = demo_config(synthetic, disk / "runs", 1, "resnet18", crop_size=32, samples_per_epoch=8)
    cfg["train_dataset"]["data_loader"]["batch_size"] = 4
    cfg["pl_trainer"].update(enable_progress_bar=False, enable_model_summary=False)
    config = tmp_path / "train.yaml"
    OmegaConf.save(OmegaConf.create(cfg), config)
    assert main(["train", "--config", str(config)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after Lightning's own log lines
    assert last.startswith("polyhead train: error: could not write") and ".ckpt" in last
    files = _final_files(disk)
    assert not [f for f in files if f.endswith(".ckpt") or ".polyhead.partial-" in f], files
