import argparse
from pathlib import Path

import pytest

from polyhead.classification.cli import add_parsers
from polyhead.classification.compare import derive_configs, task_rules
from polyhead.classification.digits import demo_config
from polyhead.config import load_config
from polyhead.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "configs/examples/classifier_digits.yaml"


def _run(argv):
    parser = argparse.ArgumentParser(prog="polyhead")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_example_yaml_is_the_demo_config(digits, tmp_path):
    batch = min(64, digits.counts["train"])  # demo_config clamps it for tiny subsets
    yaml = load_config(
        EXAMPLE,
        [
            f"data_dir={digits.out_dir}",
            f"output_dir={tmp_path}",
            f"train_dataset.data_loader.batch_size={batch}",
        ],
    )
    yaml.pop("data_dir")
    ours = demo_config(digits, tmp_path)
    assert yaml.pop("compare") == {"runs": 50} and ours.pop("compare")["runs"] == 50
    assert yaml == ours


def test_baseline_config_is_one_k_class_head_selected_on_the_same_metric(digits, tmp_path):
    cfg = demo_config(digits, tmp_path)
    assert task_rules(cfg) == ({"screen": (2,), "other": (1,)}, 3)
    multi, base = derive_configs(cfg, tmp_path)
    assert multi["model"] == cfg["model"] and multi["output_dir"] == str(tmp_path / "multihead")
    assert base["model"]["heads"] == {"classes": 3} and base["model"]["split_at"] is None
    assert base["model"]["backbone"] == cfg["model"]["backbone"]
    assert base["train_dataset"]["heads"] == {"classes": {"from": "label"}}
    assert base["task"]["derived_tasks"]["screen"] == {"head": "classes", "positive": [2]}
    assert "head_weights" not in base["task"]
    assert base["callbacks"] == cfg["callbacks"] and base["seed"] == cfg["seed"]
    assert base["val_dataset"]["input_csv_path"] == cfg["val_dataset"]["input_csv_path"]
    cfg["train_dataset"]["heads"]["other"] = {"column": "other"}
    with pytest.raises(ConfigError, match="class-id"):
        task_rules(cfg)


def test_compare_demo_writes_table_and_figure(tmp_path, capsys):
    out = tmp_path / "cmp"
    code = _run(
        [
            "compare",
            "--demo",
            "--out",
            str(out),
            "--limit",
            "60",
            "--epochs",
            "1",
            "--runs",
            "3",
            "--threads",
            "1",
            "train_dataset.image_size=32",
            "val_dataset.image_size=32",
            "test_dataset.image_size=32",
            "pl_trainer.enable_progress_bar=false",
        ]
    )
    assert code == 0
    md = (out / "comparison.md").read_text()
    assert "| single 3-class head |" in md and "| 2 heads, split at conv5 |" in md
    for column in (
        "screen precision",
        "screen recall",
        "other precision",
        "other recall",
        "Latency ms (median of 3)",
        "Parameters",
        "ONNX KB",
    ):
        assert column in md
    assert "Latency ratio multi-head / single head" in md
    assert (out / "comparison.png").stat().st_size > 10_000
    assert (out / "onnx" / "multihead.onnx").is_file() and (
        out / "onnx" / "baseline.onnx"
    ).is_file()
    assert list(out.glob("baseline/run-*/checkpoints")) and list(
        out.glob("multihead/run-*/checkpoints")
    )
    assert "| 2 heads, split at conv5 |" in capsys.readouterr().out
