"""Mask aggregation on a Dask LocalCluster gives the single-process outputs."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import rasterio

from polyhead.aggregation import aggregate_masks
from polyhead.errors import ConfigError


def _read(path):
    with rasterio.open(path) as src:
        return src.read()


def test_local_cluster_equals_one_process(small_set, tmp_path):
    pytest.importorskip("dask.distributed")
    csv_path, masks, _, _, k = small_set
    one = aggregate_masks(csv_path, tmp_path / "one", k, progress=False, workers=1)
    dask = aggregate_masks(csv_path, tmp_path / "dask", k, progress=False, scheduler="local:2")
    np.testing.assert_allclose(dask.confusion, one.confusion, rtol=0, atol=1e-12)
    assert dask.log_likelihood == one.log_likelihood
    for name in masks:
        for kind in ("soft", "hard"):
            a = _read(tmp_path / "one" / kind / f"{name}.tif")
            b = _read(tmp_path / "dask" / kind / f"{name}.tif")
            np.testing.assert_array_equal(a, b)
    docs = [json.loads((tmp_path / d / "confusion.json").read_text()) for d in ("one", "dask")]
    assert docs[0] == docs[1]
    assert (tmp_path / "one" / "train.csv").read_text() == (
        tmp_path / "dask" / "train.csv"
    ).read_text()


def test_threads_and_code_cache_change_nothing(small_set, tmp_path):
    csv_path, masks, _, _, k = small_set
    aggregate_masks(csv_path, tmp_path / "a", k, progress=False, workers=1)
    aggregate_masks(csv_path, tmp_path / "b", k, progress=False, workers=3, cache_mb=0)
    one_image = 24 * 32 * 2 / 2**20  # codes of the first image only: the others read again
    aggregate_masks(csv_path, tmp_path / "c", k, progress=False, workers=2, cache_mb=one_image)
    for name in masks:
        for kind in ("soft", "hard"):
            ref = _read(tmp_path / "a" / kind / f"{name}.tif")
            for other in ("b", "c"):
                np.testing.assert_array_equal(_read(tmp_path / other / kind / f"{name}.tif"), ref)


def test_missing_dask_and_bad_scheduler(small_set, tmp_path, monkeypatch):
    csv_path, _, _, _, k = small_set
    with pytest.raises(ConfigError, match=r"expected local:N with N >= 1"):
        aggregate_masks(csv_path, tmp_path / "o", k, progress=False, scheduler="local:x")
    monkeypatch.setitem(sys.modules, "dask.distributed", None)  # import fails
    with pytest.raises(ConfigError, match=r"pip install 'polyhead\[distributed\]'"):
        aggregate_masks(csv_path, tmp_path / "o", k, progress=False, scheduler="local:2")
    assert not (tmp_path / "o").exists()
