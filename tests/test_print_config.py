"""polyhead train --print-config, the classes and logger config keys."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from polyhead.cli import main
from polyhead.config import check_classes, flatten_layout
from polyhead.errors import ConfigError
from polyhead.train import build_logger, to_plain_config

BASE = {
    "output_dir": "OUT",
    "model": {"_target_": "polyhead.models.UPerNetDualHead", "classes": 3},
    "train_dataset": {"_target_": "polyhead.data.RandomCropSegmentationDataset", "n_classes": 3},
}


def _yaml(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**cfg, "output_dir": str(tmp_path / "out")}))
    return path


@pytest.mark.parametrize("flag", [["--print-config"], ["--cfg", "job"]])
def test_print_config_prints_the_resolved_config_and_trains_nothing(tmp_path, capsys, flag):
    path = _yaml(tmp_path, {**BASE, "classes": ["soil", {"name": "water", "color": "#0000ff"}]})
    assert main(["train", "--config", str(path), *flag, "+pl_trainer.max_epochs=3"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["pl_trainer"]["max_epochs"] == 3  # override applied
    assert printed["pl_trainer"]["log_every_n_steps"] == 10  # default filled in
    assert printed["classes"] == [
        {"name": "soil", "color": [200, 180, 140]},
        {"name": "water", "color": [0, 0, 255]},
        {"name": "class_2", "color": [46, 139, 58]},
    ]
    assert not (tmp_path / "out").exists()


def test_print_config_reports_a_bad_classes_entry(tmp_path, capsys):
    path = _yaml(tmp_path, {**BASE, "classes": ["a", {"name": "b", "color": [0, 0, 300]}]})
    assert main(["train", "--config", str(path), "--print-config"]) == 2
    assert "classes[1]: colour [0, 0, 300]" in capsys.readouterr().err


def test_classes_checked_against_the_class_count():
    with pytest.raises(ConfigError, match="classes: 4 entries for 3 classes"):
        to_plain_config({**BASE, "classes": ["a", "b", "c", "d"]})
    with pytest.raises(ConfigError, match="cannot tell the class count"):
        check_classes({"classes": ["a"]})
    assert check_classes({"num_classes": 2, "classes": None}) is None


def test_data_classes_moves_to_the_top_level():
    flat = flatten_layout({"data": {"batch_size": 2, "classes": ["a", "b"]}})
    assert flat["classes"] == ["a", "b"] and flat["data"] == {"batch_size": 2}
    with pytest.raises(ConfigError, match="classes is set both"):
        flatten_layout({"classes": ["a"], "data": {"classes": ["b"]}})


def test_logger_choices(tmp_path):
    assert type(build_logger(None, tmp_path)).__name__ == "RunCSVLogger"
    assert type(build_logger("csv", tmp_path)).__name__ == "RunCSVLogger"
    spec = {"_target_": "lightning.pytorch.loggers.CSVLogger", "save_dir": str(tmp_path)}
    assert type(build_logger(spec, tmp_path)).__name__ == "CSVLogger"
    with pytest.raises(ConfigError, match="logger: 'wandb' is not one of csv, tensorboard"):
        to_plain_config({**BASE, "logger": "wandb"})
    with pytest.raises(ConfigError, match="logger is set both"):
        from polyhead.train import build_trainer

        cfg = to_plain_config({**BASE, "logger": "csv", "pl_trainer": {"logger": False}})
        build_trainer(cfg, tmp_path)


@pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is not None
    or importlib.util.find_spec("tensorboardX") is not None,
    reason="tensorboard is installed",
)
def test_tensorboard_without_the_package_says_what_to_install():
    with pytest.raises(ConfigError, match="pip install tensorboard"):
        to_plain_config({**BASE, "logger": "tensorboard"})
