"""The class-map-only path of `predict_raster`: sums left undivided and, on a CPU, class
scores softmaxed only where tiles blend. Its class map must be the arg-max of the blended
probabilities the general path writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from polyhead.inference import Predictor, predict_array, predict_raster, tile_starts
from polyhead.inference.blend_tiles import add_tile, add_weights, own_span, rect_minus
from polyhead.models import MultiHeadSegmentationModel

from .test_pipeline import _read, _write

C, K, T, OV = 3, 5, 32, 8


def _conv3(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(C, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, K, 3, padding=1))


def test_own_span_is_covered_by_no_other_tile() -> None:
    for size, tile, overlap in ((101, 32, 8), (1000, 512, 64), (40, 32, 30), (32, 32, 8)):
        starts = tile_starts(size, tile, overlap)
        cover = np.zeros(size, int)
        for s in starts:
            cover[s : s + tile] += 1
        for i, s in enumerate(starts):
            lo, hi = own_span(starts, i, tile)
            own = np.zeros(tile, bool)
            own[lo:hi] = True
            np.testing.assert_array_equal(own, cover[s : s + tile] == 1)


def test_rect_minus_tiles_the_outer_rectangle() -> None:
    outer, inner = (1, 9, 2, 8), (3, 6, 2, 5)
    cover = np.zeros((10, 10), int)
    for y0, y1, x0, x1 in [*rect_minus(outer, inner), inner]:
        cover[y0:y1, x0:x1] += 1
    expected = np.zeros((10, 10), int)
    expected[1:9, 2:8] = 1
    np.testing.assert_array_equal(cover, expected)
    assert rect_minus(outer, (4, 4, 2, 5)) == [outer]  # an empty inner rectangle


def test_add_tile_sets_fresh_pixels_and_adds_to_the_rest() -> None:
    rng = np.random.default_rng(0)
    values = torch.from_numpy(rng.normal(size=(K, 12, 10)).astype(np.float32))
    weights = torch.from_numpy(rng.random((12, 10)).astype(np.float32) + 0.1)
    before = torch.from_numpy(rng.normal(size=(K, 12, 10)).astype(np.float32))
    fresh = (4, 12, 3, 10)  # below the tile above, right of the tile to the left
    acc = before.clone()
    acc[:, 4:, 3:] = float("nan")  # what an earlier band or strip left there
    add_tile(acc, values, weights, fresh)
    expected = before + values * weights
    expected[:, 4:, 3:] = values[:, 4:, 3:] * weights[4:, 3:]
    np.testing.assert_allclose(acc.numpy(), expected.numpy(), rtol=1e-6, atol=1e-6)
    wsum = torch.ones((12, 10))
    wsum[4:, 3:] = float("nan")
    add_weights(wsum, weights, fresh)
    expected_w = 1 + weights
    expected_w[4:, 3:] = weights[4:, 3:]
    np.testing.assert_allclose(wsum.numpy(), expected_w.numpy(), rtol=1e-6)


def test_add_tile_keeps_the_argmax_of_the_weighted_softmax() -> None:
    rng = np.random.default_rng(0)
    scores = torch.from_numpy(rng.normal(size=(K, 12, 10)).astype(np.float32))
    weights = torch.from_numpy(rng.random((12, 10)).astype(np.float32) + 0.1)
    acc = torch.full((K, 12, 10), float("nan"))
    add_tile(acc, scores, weights, (0, 12, 0, 10), (3, 9, 2, 7))
    probs = torch.softmax(scores, 0)
    np.testing.assert_array_equal(acc[:, 3:9, 2:7], scores[:, 3:9, 2:7])  # own pixels: scores
    frame = np.ones((12, 10), bool)
    frame[3:9, 2:7] = False
    expected = (probs * weights).numpy()
    np.testing.assert_allclose(acc.numpy()[:, frame], expected[:, frame], rtol=1e-6)
    whole = torch.zeros_like(acc)
    add_tile(whole, scores, weights, (12, 12, 0, 10), (5, 5, 2, 7))  # nothing fresh or own
    np.testing.assert_allclose(whole.numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("block", [4096, 40])
def test_class_map_alone_is_the_argmax_of_the_blended_probabilities(
    tmp_path: Path, block: int
) -> None:
    image = np.random.default_rng(3).random((C, 101, 133), dtype=np.float32)
    image[:, 40:80, :50] = np.nan  # nodata: some tiles skipped, their neighbours' frames alone
    src = _write(tmp_path / "in.tif", image, nodata=None)
    model = _conv3(2)
    common = dict(tile_size=T, overlap=OV, batch_size=3, progress=False, block_size=block)
    alone = predict_raster(model, src, tmp_path / "alone.tif", **common)
    full = predict_raster(model, src, tmp_path / "full.tif", write_probabilities=True, **common)
    assert alone.n_tiles_nodata > 0 and alone.n_tiles_run == full.n_tiles_run
    classes, proba = _read(alone.class_map_path)[0], _read(full.probabilities_path)
    valid = ~np.isnan(proba[0])
    np.testing.assert_array_equal(classes[valid], proba.argmax(0)[valid])
    np.testing.assert_array_equal(classes, _read(full.class_map_path)[0])
    assert (classes[~valid] == 255).all()


def test_class_scores_are_the_logits_of_the_probabilities() -> None:
    heads = {"A": "fpn", "B": {"decoder": "upernet", "decoder_channels": 16}}
    model = MultiHeadSegmentationModel(heads, encoder_name="resnet18", in_channels=C, classes=K)
    model.eval()
    model.heads["A"].temperature.fill_(1.7)
    x = torch.rand(2, C, 32, 32)
    for head in ("A", "B", "average"):
        predictor = Predictor(model, head=head)
        assert predictor.softmax_scores
        with torch.no_grad():
            got = torch.softmax(predictor.class_scores(x), 1)
            np.testing.assert_allclose(got, predictor(x)["probabilities"], atol=1e-6)
    assert not Predictor(model, tta="flips").softmax_scores
    assert not Predictor(model, tta="d4").softmax_scores


def test_scores_path_matches_predict_array(tmp_path: Path) -> None:
    """Tiles larger than the raster on one axis and shifted last tiles, one band."""
    image = np.random.default_rng(5).random((C, 29, 75), dtype=np.float32)
    src = _write(tmp_path / "in.tif", image)
    model = _conv3(4)
    res = predict_raster(model, src, tmp_path / "c.tif", tile_size=T, overlap=OV, progress=False)
    ref = predict_array(model, image, tile_size=T, overlap=OV)
    np.testing.assert_array_equal(_read(res.class_map_path)[0], ref.argmax(0))


@pytest.mark.parametrize("probabilities", [False, True])
def test_zeroed_sums_give_the_same_maps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, probabilities: bool
) -> None:
    """A GPU adds every tile into zeroed sums (one kernel per tile); a CPU sets the pixels
    no earlier tile wrote: the same sums, to the bit (several bands, nodata tiles)."""
    from polyhead.inference import pipeline_blend

    image = np.random.default_rng(7).random((C, 201, 133), dtype=np.float32)
    image[:, 40:80, :50] = np.nan  # tall enough for the sums' buffers to be reused
    src = _write(tmp_path / "in.tif", image, nodata=None)
    common = dict(tile_size=T, overlap=OV, batch_size=3, progress=False, block_size=40)
    common["write_probabilities"] = probabilities
    sets = predict_raster(_conv3(1), src, tmp_path / "sets.tif", **common)
    monkeypatch.setattr(pipeline_blend, "SETS_FRESH", ())
    zeroed = predict_raster(_conv3(1), src, tmp_path / "zeroed.tif", **common)
    pairs = [(sets.class_map_path, zeroed.class_map_path)]
    if probabilities:
        pairs.append((sets.probabilities_path, zeroed.probabilities_path))
    for a, b in pairs:
        np.testing.assert_array_equal(_read(a), _read(b))
