"""psmt config entries as polyhead ones: model options, datasets (hard_mask_csv, crop_size
lists), the Kendall loss as learned balancing, and the alias walk `polyhead train` uses."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from polyhead.compat import resolve_aliases
from polyhead.errors import ConfigError, DataError
from polyhead.psmt.config import (
    DATASET,
    DUAL_HEAD,
    MULTI_HEAD,
    translate_dataset,
    translate_model,
)
from polyhead.psmt.masks import merge_hard_masks
from tests.psmt.conftest import SEED, psmt_config

PSMT_DATASET = f"{SEED}.dataset_loader.dataset.RandomCropSegmentationDataset"


def _never(*args):
    raise AssertionError("no CSV to merge here")


def test_model_default_norm_is_the_dual_head_and_other_norms_two_upernet_heads():
    node = psmt_config()["model"]
    assert translate_model(node)["_target_"] == DUAL_HEAD
    multi = translate_model({**node, "decoder_use_norm": "identity", "activation": None})
    assert multi["_target_"] == MULTI_HEAD
    assert multi["heads"]["A"] == {
        "decoder": "upernet",
        "decoder_channels": 16,
        "decoder_use_norm": "identity",
        "role": "hard",
    }
    assert multi["heads"]["B"]["role"] == "soft" and "decoder_channels" not in multi


def test_model_options_polyhead_cannot_honour_are_named():
    node = {**psmt_config()["model"], "upsampling": 8, "aux_params": {}}
    with pytest.raises(ConfigError, match=r"model: .*upsampling=8, aux_params \(supported:"):
        translate_model(node)


def test_crop_size_list_square_and_rectangular():
    node = {"_target_": PSMT_DATASET, "input_csv_path": "a.csv", "crop_size": [48, 48]}
    out = translate_dataset(node, "train_dataset", _never)
    assert out == {
        "_target_": DATASET,
        "input_csv_path": "a.csv",
        "crop_size": 48,
        "n_classes": 2,  # psmt's defaults, written out
        "samples_per_epoch": 10000,
    }
    with pytest.raises(ConfigError, match=r"train_dataset.crop_size is \[48, 32\]; polyhead"):
        translate_dataset({**node, "crop_size": [48, 32]}, "train_dataset", _never)


def test_dataset_options_refused_unless_off_and_no_effect_ones_reported():
    node = {"_target_": PSMT_DATASET, "input_csv_path": "a.csv", "crop_size": 32}
    off = {**node, "cutmix_prob": 0.0, "class_balanced_sampling": False, "use_rasterio": True}
    notes: list[str] = []
    out = translate_dataset(off, "val_dataset", _never, notes)
    assert "cutmix_prob" not in out and notes == ["val_dataset.use_rasterio"]
    on = {**node, "cutmix_prob": 0.5, "class_balanced_sampling": True, "min_valid_ratio": 0.1}
    with pytest.raises(ConfigError) as err:
        translate_dataset(on, "val_dataset", _never)
    msg = str(err.value)
    assert "cutmix_prob=0.5, class_balanced_sampling=True, min_valid_ratio=0.1" in msg
    assert msg.startswith("val_dataset: psmt RandomCropSegmentationDataset option(s)")


def _csv(path, rows):
    path.write_text("image,mask\n" + "".join(f"{a},{b}\n" for a, b in rows))
    return path


def test_merge_matches_rows_by_image_path(tmp_path):
    soft = _csv(tmp_path / "soft.csv", [("i1.tif", "s1.tif"), ("i2.tif", "s2.tif")])
    hard = _csv(tmp_path / "hard.csv", [("i2.tif", "h2.tif"), ("i1.tif", "h1.tif")])
    rows = merge_hard_masks(soft, hard)
    assert [tuple(p.rsplit("/", 1)[-1] for p in r) for r in rows] == [
        ("i1.tif", "h1.tif", "s1.tif"),
        ("i2.tif", "h2.tif", "s2.tif"),
    ]
    bad = _csv(tmp_path / "bad.csv", [("i1.tif", "h1.tif"), ("i3.tif", "h3.tif")])
    with pytest.raises(DataError, match=r"soft.csv: row 2 \(image .*i2.tif\) has no row in"):
        merge_hard_masks(soft, bad)
    more = _csv(tmp_path / "more.csv", [("i1.tif", "h"), ("i2.tif", "h"), ("i9.tif", "h")])
    with pytest.raises(DataError, match=r"more.csv: row 3 \(image .*i9.tif\) has no row"):
        merge_hard_masks(soft, more)


def test_kendall_loss_becomes_uncertainty_weighting_seeded_by_sigmas():
    balancing = pytest.importorskip(
        "polyhead.losses.balancing", reason="UncertaintyWeighting (other engineer) not there yet"
    )
    from hydra.utils import instantiate

    from polyhead.psmt.config import translate_config

    lines: list[str] = []
    cfg, used = translate_config(
        psmt_config(), _never, {"log_sigma_hard": 0.5, "log_sigma_consist": -0.25}, lines.append
    )
    assert "loss" not in cfg and cfg["task"]["consistency_weight"] == 1.0
    weighting = instantiate(cfg["task"]["balancing"])
    assert isinstance(weighting, balancing.UncertaintyWeighting)
    weighting.setup(["A", "B", "consistency"])
    assert weighting.logged() == pytest.approx({"A": 1.0, "B": 0.0, "consistency": -0.5})
    assert used[f"{SEED}.custom_losses.loss.DualHeadKendallLoss"].endswith("(task.balancing)")


def _raster(path, array):
    count, h, w = array.shape
    profile = dict(driver="GTiff", width=w, height=h, count=count, dtype=str(array.dtype))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array)


def test_train_config_with_hard_mask_csv_builds_a_dataset_with_both_masks(tmp_path):
    from polyhead.config import build

    rng = np.random.default_rng(0)
    hard = rng.integers(0, 3, (1, 32, 32), dtype=np.uint8)
    soft = rng.dirichlet(np.ones(3), (32, 32)).transpose(2, 0, 1).astype(np.float32)
    _raster(tmp_path / "img.tif", rng.integers(0, 255, (3, 32, 32), dtype=np.uint8))
    _raster(tmp_path / "hard.tif", hard)
    _raster(tmp_path / "soft.tif", soft)
    node = {
        "_target_": PSMT_DATASET,
        "input_csv_path": str(_csv(tmp_path / "soft.csv", [("img.tif", "soft.tif")])),
        "hard_mask_csv": str(_csv(tmp_path / "hard.csv", [("img.tif", "hard.tif")])),
        "return_hard_mask": True,
        "soft_labels": True,
        "crop_size": [32, 32],
        "grid_mode": True,
        "n_classes": 3,
    }
    lines: list[str] = []
    cfg = resolve_aliases({"train_dataset": node}, report=lines.append)
    assert lines == [f"polyhead: alias {PSMT_DATASET} -> {DATASET}"]
    dataset = build(cfg["train_dataset"], "train_dataset")
    item = dataset[0]
    np.testing.assert_array_equal(item["targets"]["hard"].numpy(), hard[0])
    np.testing.assert_allclose(item["targets"]["soft"].numpy(), soft, atol=1e-6)


def test_alias_walk_keeps_the_plain_seed_aliases():
    lines: list[str] = []
    cfg = psmt_config()
    del cfg["loss"]
    out = resolve_aliases(cfg, report=lines.append)
    assert out["model"]["_target_"] == DUAL_HEAD and out["val_dataset"]["crop_size"] == 64
    assert len(lines) == 2  # model and dataset, once each


def test_kendall_elsewhere_says_where_it_belongs():
    node = {"x": {"_target_": f"{SEED}.custom_losses.loss.DualHeadKendallLoss"}}
    with pytest.raises(ConfigError, match="supported only as polyhead.losses.balancing"):
        resolve_aliases(node, report=None)


def test_psmt_config_builds_a_task_with_the_seeded_balancing(tmp_path):
    """The whole way `polyhead train` goes: aliases, then the task with its learned balancing."""
    from polyhead.train import build_task, to_plain_config

    cfg = psmt_config()
    del cfg["metrics"]  # a psmt key polyhead does not read
    cfg["train_dataset"] = cfg["val_dataset"]
    task = build_task(to_plain_config(cfg))
    weighting = task.criterion.balancer
    assert type(weighting).__name__ == "UncertaintyWeighting"
    assert sorted(weighting.logged()) == ["A", "B", "consistency"]
    assert task.criterion.consistency_weight == 1.0
    assert task.criterion.consistency_warmup_epochs == 3
