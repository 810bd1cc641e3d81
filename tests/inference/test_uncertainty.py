"""Tests for per-pixel uncertainty and the uncertainty band of `predict_raster`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import Affine
from torch import nn

from polyhead.errors import ConfigError
from polyhead.inference import (
    max_prob_uncertainty,
    predict_array,
    predict_raster,
    predictive_entropy,
    uncertainty_map,
)

C, K = 3, 4
TRANSFORM = Affine(10.0, 0.0, 400000.0, 0.0, -10.0, 5100000.0)


def test_entropy_and_max_prob_values() -> None:
    probs = np.zeros((K, 1, 3), np.float32)
    probs[0, 0, 0] = 1.0  # one-hot
    probs[:, 0, 1] = 1.0 / K  # uniform
    probs[:2, 0, 2] = 0.5  # two-way tie
    ent = predictive_entropy(probs)
    np.testing.assert_allclose(ent[0], [0.0, 1.0, np.log(2) / np.log(K)], atol=1e-6)
    assert ent.dtype == np.float32 and ent.shape == (1, 3)
    np.testing.assert_allclose(max_prob_uncertainty(probs)[0], [0.0, 0.75, 0.5], atol=1e-6)
    raw = predictive_entropy(probs, normalize=False)
    np.testing.assert_allclose(raw[0, 1], np.log(K), rtol=1e-6)
    t = torch.from_numpy(probs)
    torch.testing.assert_close(predictive_entropy(t), torch.from_numpy(ent))
    torch.testing.assert_close(
        uncertainty_map(t, "max_prob"), torch.from_numpy(max_prob_uncertainty(probs))
    )
    np.testing.assert_array_equal(uncertainty_map(probs), ent)
    # class axis elsewhere, one class
    np.testing.assert_allclose(predictive_entropy(np.moveaxis(probs, 0, -1), axis=-1), ent)
    assert predictive_entropy(np.ones((1, 2, 2))).max() == 0.0
    with pytest.raises(ConfigError, match="kind"):
        uncertainty_map(probs, "variance")


def _raster(path: Path, h: int, w: int) -> Path:
    image = np.random.default_rng(0).random((C, h, w), dtype=np.float32)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=h,
        width=w,
        count=C,
        dtype="float32",
        crs="EPSG:32633",
        transform=TRANSFORM,
    ) as dst:
        dst.write(image)
    return path


def test_predict_raster_writes_uncertainty_band(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(C, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, K, 1))
    src_path = _raster(tmp_path / "scene.tif", 90, 70)
    result = predict_raster(
        model,
        src_path,
        tmp_path / "out" / "map.tif",
        tile_size=32,
        overlap=8,
        write_uncertainty=True,
        progress=False,
    )
    unc_path = tmp_path / "out" / "map_uncertainty.tif"
    assert result.uncertainty_path == unc_path and result.probabilities_path is None
    with rasterio.open(src_path) as src:
        image = src.read()
    probs = predict_array(model, image, tile_size=32, overlap=8)
    with rasterio.open(unc_path) as unc:
        assert unc.count == 1 and unc.dtypes[0] == "float32" and unc.shape == (90, 70)
        assert unc.crs.to_epsg() == 32633 and unc.transform == TRANSFORM
        np.testing.assert_allclose(unc.read(1), predictive_entropy(probs), atol=1e-5)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "map.tif",
        "map_uncertainty.tif",
    ]  # no temp files left
    # explicit path, with probabilities; colliding paths are refused
    custom = tmp_path / "u.tif"
    predict_raster(
        model,
        src_path,
        tmp_path / "m2.tif",
        tile_size=32,
        overlap=8,
        write_probabilities=True,
        write_uncertainty=True,
        uncertainty_path=custom,
        progress=False,
    )
    assert custom.is_file() and (tmp_path / "m2_proba.tif").is_file()
    with pytest.raises(ConfigError, match="differ"):
        predict_raster(
            model,
            src_path,
            tmp_path / "m3.tif",
            write_uncertainty=True,
            uncertainty_path=tmp_path / "m3.tif",
            progress=False,
        )
