"""The harder annotator simulation: mistakes along class borders, towards the other side."""

import math

import numpy as np
import pytest

from polyhead.demo.scenes import land_cover_map
from polyhead.errors import ConfigError, DataError
from polyhead.study.annotators import (
    HARDER_ANNOTATORS,
    BorderAnnotator,
    annotate,
    border_annotation,
    border_error_probability,
    nearest_other_class,
)

IDENTITY = np.full((6, 6), 0.2) - np.eye(6) * 0.2  # any error-conditional confusion


def _map(seed: int = 0, size: int = 96) -> np.ndarray:
    return land_cover_map(np.random.default_rng(seed), size, 6)


def test_nearest_other_class_hand_computed():
    dist, other = nearest_other_class(np.array([[0, 0, 1, 1, 1]]))
    assert dist.tolist() == [[2, 1, 1, 2, 3]]
    assert other.tolist() == [[1, 1, 0, 0, 0]]
    dist, other = nearest_other_class(np.zeros((3, 3), int))
    assert np.isinf(dist).all() and (other == 0).all()
    with pytest.raises(DataError, match="truth must be"):
        nearest_other_class(np.zeros(4, int))


def test_border_error_probability_decays_over_width():
    a = BorderAnnotator(border_error=0.4, width=2.0)
    p = border_error_probability(np.array([0.5, 1.0, 3.0]), a)
    assert p == pytest.approx([0.4, 0.4, 0.4 / math.e])


def test_a_perfect_annotator_copies_the_truth():
    truth = _map()
    perfect = BorderAnnotator(reliability=1.0, border_error=0.0)
    out = border_annotation(truth, perfect, IDENTITY, np.random.default_rng(1))
    assert np.array_equal(out, truth)


def test_border_mistakes_take_the_class_across_the_nearest_border():
    truth = _map()
    a = BorderAnnotator(reliability=1.0, border_error=0.5, width=2.0)
    out = border_annotation(truth, a, IDENTITY, np.random.default_rng(2))
    dist, other = nearest_other_class(truth)
    wrong = out != truth
    assert np.array_equal(out[wrong], other[wrong])
    # about border_error at the border, almost nothing far from it
    at_border = wrong[dist == 1].mean()
    assert 0.35 < at_border < 0.65
    assert wrong[dist >= 10].mean() < 0.02


def test_harder_annotators_disagree_most_near_borders():
    truth = _map(3, 128)
    masks = annotate(truth, HARDER_ANNOTATORS, {n: IDENTITY for n in HARDER_ANNOTATORS},
                     np.random.default_rng(4))  # fmt: skip
    assert masks.shape == (2, 128, 128)
    dist, _ = nearest_other_class(truth)
    disagree = masks[0] != masks[1]
    near, far = disagree[dist <= 2].mean(), disagree[dist >= 6].mean()
    assert near > 2 * far and near - far > 0.25


def test_same_seed_same_masks_and_bad_options_refused():
    truth = _map()
    a = HARDER_ANNOTATORS["hurried"]
    first = border_annotation(truth, a, IDENTITY, np.random.default_rng(5))
    assert np.array_equal(first, border_annotation(truth, a, IDENTITY, np.random.default_rng(5)))
    with pytest.raises(ConfigError, match="border_error"):
        BorderAnnotator(border_error=1.5)
    with pytest.raises(ConfigError, match="no confusion matrix"):
        annotate(truth, HARDER_ANNOTATORS, {}, np.random.default_rng(0))
