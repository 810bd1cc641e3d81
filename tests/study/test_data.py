"""In-memory scene sets: splits, aggregates consistent with the annotations."""

import numpy as np
import pytest
import torch

from polyhead.errors import ConfigError
from polyhead.study.data import dawid_skene_masks, make_study_data


def test_study_data_splits_and_aggregates():
    data = make_study_data("harder", 0, {"train": 2, "val": 1, "test": 1}, size=32, n_classes=4)
    assert data.annotators == ("careful", "hurried")
    for split, n in (("train", 2), ("val", 1), ("test", 1)):
        s = data.splits[split]
        assert s["image"].shape == (n, 4, 32, 32) and s["truth"].shape == (n, 32, 32)
        assert s["soft"].shape == (n, 4, 32, 32)
        assert torch.allclose(s["soft"].sum(1), torch.ones(n, 32, 32), atol=1e-5)
        assert torch.equal(s["ds"], s["soft"].argmax(1))
        assert torch.allclose(s["vf"].sum(1), torch.ones(n, 32, 32))
        assert set(s["vf"].unique().tolist()) <= {0.0, 0.5, 1.0}  # two annotators
    train = data.splits["train"]["image"]
    assert torch.allclose(train.mean((0, 2, 3)), torch.zeros(4), atol=1e-4)
    assert set(data.label_quality) == {"careful", "hurried", "majority vote", "Dawid-Skene arg-max"}
    # two annotators: the majority vote breaks ties towards the more reliable one
    assert data.label_quality["majority vote"] == data.label_quality["careful"]


def test_dawid_skene_masks_give_one_posterior_per_label_pattern():
    stacks = np.zeros((1, 3, 2, 2), np.int64)
    stacks[0, :, 0, 0] = (1, 1, 1)  # unanimous
    stacks[0, :, 1, 1] = (1, 1, 1)
    post = dawid_skene_masks(stacks, 2)
    assert post.shape == (1, 2, 2, 2)
    assert np.allclose(post[0, :, 0, 0], post[0, :, 1, 1])
    assert post[0, :, 0, 0].argmax() == 1 and post[0, :, 0, 1].argmax() == 0


def test_unknown_setting_and_empty_split_are_refused():
    with pytest.raises(ConfigError, match="setting must be one of"):
        make_study_data("easy", 0, {"train": 1, "val": 1, "test": 1})
    with pytest.raises(ConfigError, match="none for \\['test'\\]"):
        make_study_data("standard", 0, {"train": 1, "val": 1, "test": 0})
