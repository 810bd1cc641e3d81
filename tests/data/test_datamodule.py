"""The DataModule owns the loaders; each dataset's own data_loader options win."""

from __future__ import annotations

import pytest
from torch.utils.data import RandomSampler, SequentialSampler

from polyhead.data import DataModule, RandomCropSegmentationDataset
from polyhead.data.classification import ClassificationCSVDataset
from polyhead.errors import ConfigError

from .conftest import N_CLASSES


def _ds(seg_set, **kw):
    return RandomCropSegmentationDataset(seg_set.csv, 16, N_CLASSES, soft_labels=True, **kw)


def test_dataset_options_win_over_the_modules(seg_set):
    train = _ds(seg_set, samples_per_epoch=6, data_loader={"batch_size": 3})
    val = _ds(seg_set, grid_mode=True)
    dm = DataModule(train, val, batch_size=2, num_workers=0)
    loader = dm.train_dataloader()
    assert loader.batch_size == 3 and isinstance(loader.sampler, RandomSampler)
    val_loader = dm.val_dataloader()
    assert val_loader.batch_size == 2 and isinstance(val_loader.sampler, SequentialSampler)
    assert len(list(loader)) == 2
    assert dm.test_dataloader() == []


def test_training_order_follows_the_dataset_when_it_says_so(seg_set):
    train = _ds(seg_set, samples_per_epoch=4, data_loader={"shuffle": False})
    dm = DataModule(train)
    assert isinstance(dm.train_dataloader().sampler, SequentialSampler)
    assert dm.val_dataloader() == []


def test_bad_arguments_name_what_to_change(seg_set):
    train = _ds(seg_set, samples_per_epoch=4)
    with pytest.raises(ConfigError, match="batch_size"):
        DataModule(train, batch_size=0)
    with pytest.raises(ConfigError, match="num_workers"):
        DataModule(train, num_workers=-1)
    with pytest.raises(ConfigError, match="train_dataset"):
        DataModule(None)


def test_both_datasets_check_loader_options_one_way(seg_set, tmp_path):
    (tmp_path / "x.csv").write_text("path,label\n")
    with pytest.raises(ConfigError, match="unknown key.*torch DataLoader accepts"):
        _ds(seg_set, samples_per_epoch=4, data_loader={"batchsize": 2})
    with pytest.raises(ConfigError, match="unknown key.*torch DataLoader accepts"):
        ClassificationCSVDataset(tmp_path / "x.csv", {"a": "label"}, data_loader={"batchsize": 2})
