"""The config groups under configs/: each file mirrors a constructor, the class count is written
once, and every experiment trains through `polyhead train --config-name train experiment=...`."""

from __future__ import annotations

import csv
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from torch.utils.data import DataLoader

from polyhead.cli import main
from polyhead.config import TRAINER, compose, flatten_layout, load_config, target_class
from polyhead.errors import ConfigError
from polyhead.train import build_task, to_plain_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
HYDRA_KEYS = {"_target_", "_partial_", "_convert_", "_recursive_", "_args_"}
#: each run: 1 epoch, 2 training batches, 1 validation batch, CPU, quiet
TINY = [
    "trainer=cpu",
    "++trainer.max_epochs=1",
    "++trainer.limit_train_batches=2",
    "++trainer.limit_val_batches=1",
    "++trainer.num_sanity_val_steps=0",
    "++trainer.log_every_n_steps=1",
    "data.batch_size=2",
    "data.num_workers=0",
]
SEGMENTATION = [
    "model.encoder_weights=null",
    "data.train_dataset.crop_size=32",
    "data.train_dataset.samples_per_epoch=4",
    "++data.val_dataset.data_loader.num_workers=0",
]


def _init_arguments(cls: type) -> set[str] | None:
    """Named ``__init__`` arguments of ``cls``, following ``**kwargs`` up the MRO; None when
    the chain ends in ``**kwargs`` (any key is accepted)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        names |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return names - {"self"}
    return None


def _init_defaults(cls: type) -> dict[str, Any]:
    """Default values of ``cls``'s ``__init__`` arguments, following ``**kwargs`` up the MRO."""
    defaults: dict[str, Any] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        for p in params:
            if p.default is not p.empty:
                defaults.setdefault(p.name, p.default)
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return defaults


LOADER_DEFAULTS = {**_init_defaults(DataLoader), "shuffle": False}  # None and False: in order


def _with_defaults(node: Any) -> Any:
    """A config tree where each ``_target_`` entry lists every argument that has a default."""
    if isinstance(node, list | tuple):  # a tuple default reads as a YAML list
        return [_with_defaults(v) for v in node]
    if not isinstance(node, dict):
        return node
    if "_target_" in node:
        node = {**_init_defaults(target_class(node["_target_"], "_target_")), **node}
    return {k: _with_defaults(v) for k, v in node.items()}


def _effective(cfg: dict) -> dict:
    """What a config trains with, layout aside: task arguments under ``task``, each loader's
    options as the DataModule merges them, every constructor default filled in."""
    flat = to_plain_config(cfg)
    task = {"_target_": "polyhead.tasks.SegmentationTask", **(flat.pop("task") or {})}
    for key in ("loss", "optimizer", "scheduler"):
        if flat.get(key) is not None:
            task[key] = flat.pop(key)
    data = flat.pop("data", None) or {}
    shared = {k: data[k] for k in ("batch_size", "num_workers") if data.get(k) is not None}
    for split in ("train", "val", "test"):
        dataset = flat.get(f"{split}_dataset")
        if dataset:
            first = {"shuffle": True} if split == "train" else {}
            loader = {**shared, **first, **(dataset.get("data_loader") or {})}
            dataset["data_loader"] = {
                k: v for k, v in loader.items() if LOADER_DEFAULTS.get(k, ...) != v
            }
    for key in ("num_classes", "in_channels"):
        flat.pop(key, None)
    trainer = {"_target_": TRAINER, **flat["pl_trainer"]}
    out = _with_defaults({**flat, "task": task, "pl_trainer": trainer})
    if "num_classes" in out["task"] and out["task"]["num_classes"] is None:
        out["task"]["num_classes"] = out["model"]["classes"]  # what the task falls back to
    return out


def _differences(example: Any, experiment: Any, path: str = "") -> list[str]:
    """Where the two trees differ."""
    if isinstance(example, dict) and isinstance(experiment, dict):
        lines = [f"{path}.{k}: only in the experiment" for k in set(experiment) - set(example)]
        for key, value in example.items():
            if key not in experiment:
                lines.append(f"{path}.{key}: absent from the experiment")
            else:
                lines += _differences(value, experiment[key], f"{path}.{key}")
        return lines
    if isinstance(example, list) and isinstance(experiment, list):
        if len(example) == len(experiment):
            pairs = zip(example, experiment, strict=True)
            return [
                line
                for i, (a, b) in enumerate(pairs)
                for line in _differences(a, b, f"{path}[{i}]")
            ]
    return [] if example == experiment else [f"{path}: {example!r} != {experiment!r}"]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_trains_what_its_example_trains(experiment):
    example = _effective(load_config(CONFIGS / "examples" / f"{experiment}.yaml"))
    composed = _effective(compose(CONFIGS, "train", [f"experiment={experiment}"]))
    assert not _differences(example, composed)


def _targets(node: Any, path: str = "") -> Iterator[tuple[str, dict]]:
    if isinstance(node, dict):
        if "_target_" in node:
            yield path, node
        for key, value in node.items():
            yield from _targets(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _targets(value, f"{path}[{i}]")


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_target_gets_only_its_constructor_arguments(experiment):
    cfg = compose(CONFIGS, "train", [f"experiment={experiment}"])
    checked = 0
    for path, node in _targets(cfg):
        allowed = _init_arguments(target_class(node["_target_"], path))
        if allowed is None:
            continue
        unknown = set(node) - HYDRA_KEYS - allowed
        assert not unknown, f"{experiment}: {path} ({node['_target_']}) has {sorted(unknown)}"
        checked += 1
    assert {"model", "data", "task", "trainer"} <= set(cfg) and checked >= 6


def _class_count_consumers(cfg: dict) -> list[Any]:
    flat = flatten_layout(cfg)
    datasets = [flat[k] for k in ("train_dataset", "val_dataset", "test_dataset") if flat.get(k)]
    if flat["model"]["_target_"].endswith("MultiHeadClassifier"):
        return [d["classes"] for d in datasets]
    counts = [flat["model"]["classes"], flat["task"]["num_classes"]]
    return counts + [d["n_classes"] for d in datasets]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_class_count_is_written_once(experiment):
    default = compose(CONFIGS, "train", [f"experiment={experiment}"])
    changed = compose(CONFIGS, "train", [f"experiment={experiment}", "num_classes=11"])
    assert len(_class_count_consumers(default)) >= 2
    assert set(_class_count_consumers(default)) == {default["num_classes"]} != {11}
    assert set(_class_count_consumers(changed)) == {11}


def test_a_missing_value_is_one_line_naming_the_key(capsys):
    assert main(["train", "--config-dir", str(CONFIGS), "--config-name", "train"]) == 2
    err = capsys.readouterr().err
    assert "data.train_dataset.input_csv_path" in err and "???" in err


@pytest.fixture(scope="module")
def distill_csvs(synthetic, tmp_path_factory) -> dict[str, Path]:
    """The synthetic scenes as distill-targets CSVs: soft masks plus a random 3 + K band
    uncertainty raster per scene."""
    out = tmp_path_factory.mktemp("distill_csvs")
    rng = np.random.default_rng(0)
    csvs = {}
    for split, src in (("train", synthetic.train_csv), ("val", synthetic.val_csv)):
        with open(src, newline="") as fh:
            rows = list(csv.DictReader(fh))
        for row in rows:
            for key in ("image", "mask", "soft_mask"):
                row[key] = str((src.parent / row[key]).resolve())
            with rasterio.open(row["image"]) as img:
                profile = {"driver": "GTiff", "height": img.height, "width": img.width}
                profile.update(crs=img.crs, transform=img.transform)
            unc = rng.random((3 + 4, profile["height"], profile["width"])).astype(np.float32)
            path = out / f"{Path(row['image']).stem}_unc.tif"
            with rasterio.open(path, "w", count=unc.shape[0], dtype="float32", **profile) as dst:
                dst.write(unc)
            row["uncertainty"] = str(path)
        csvs[split] = out / f"{split}.csv"
        with open(csvs[split], "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["image", "mask", "soft_mask", "uncertainty"])
            writer.writeheader()
            writer.writerows(rows)
    return csvs


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory) -> Path:
    from polyhead.classification.digits import write_digits

    return write_digits(tmp_path_factory.mktemp("digits"), limit=90).out_dir


def _overrides(experiment: str, request: pytest.FixtureRequest) -> list[str]:
    if experiment == "upernet_dual_head":
        d = request.getfixturevalue("synthetic_rgb6")
        return [
            *SEGMENTATION,
            f"data.train_dataset.input_csv_path={d.train_csv}",
            f"data.val_dataset.input_csv_path={d.val_csv}",
            "model.encoder_name=tu-test_convnext",
            "model.decoder_channels=16",
        ]
    if experiment.startswith("distill_"):
        csvs = request.getfixturevalue("distill_csvs")
        return [
            *SEGMENTATION,
            f"data.train_dataset.input_csv_path={csvs['train']}",
            f"data.val_dataset.input_csv_path={csvs['val']}",
            "model.encoder_name=resnet18",
            "model.heads.seg.decoder_channels=16",
            "model.heads.unc.decoder_channels=16",
        ]
    if experiment == "classifier_digits":
        return [
            f"data_dir={request.getfixturevalue('digits_dir')}",
            "data.train_dataset.image_size=32",
        ]
    raise AssertionError(f"no tiny settings for experiment {experiment}; add them here")


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_trains_through_the_cli(experiment, request, tmp_path, capsys):
    overrides = [*TINY, *_overrides(experiment, request), f"output_dir={tmp_path}"]
    argv = ["train", "--config-dir", str(CONFIGS), "--config-name", "train"]
    assert main([*argv, f"experiment={experiment}", *overrides]) == 0, capsys.readouterr().err
    assert "best checkpoint:" in capsys.readouterr().out
    assert list(tmp_path.glob("run-*/checkpoints/*.ckpt"))


def test_layouts_do_not_mix_silently():
    data = {"_target_": "polyhead.data.DataModule", "train_dataset": {"a": 1}, "batch_size": 2}
    flat = flatten_layout({"data": data, "trainer": {"_target_": TRAINER, "max_epochs": 1}})
    assert flat["train_dataset"] == {"a": 1} and flat["pl_trainer"] == {"max_epochs": 1}
    assert flat["data"] == {"_target_": "polyhead.data.DataModule", "batch_size": 2}
    assert flatten_layout(flat) == flat
    with pytest.raises(ConfigError, match="train_dataset is set both"):
        flatten_layout({"data": data, "train_dataset": {"b": 2}})
    with pytest.raises(ConfigError, match="not both"):
        flatten_layout({"trainer": {}, "pl_trainer": {"max_epochs": 1}})
    model = {"_target_": "torch.nn.Identity"}
    loss = {"_target_": "torch.nn.CrossEntropyLoss"}
    cfg = to_plain_config(
        {"model": model, "train_dataset": {"a": 1}, "loss": loss, "task": {"loss": loss}}
    )
    with pytest.raises(ConfigError, match="loss is set both"):
        build_task(cfg)
