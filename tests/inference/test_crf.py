"""Tests for dense CRF refinement, boundary F1 and the CRF/TTA/uncertainty path of predict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import Affine
from torch import nn

from polyhead.checkpoint import load_checkpoint
from polyhead.errors import ConfigError, DataError
from polyhead.inference import (
    BoundaryF1,
    PermutohedralLattice,
    boundary_f1,
    boundary_mask,
    check_crf_size,
    dense_crf,
    predict_array,
    predict_raster_crf,
    predictive_entropy,
)
from polyhead.inference import crf as crf_module
from polyhead.inference.predict import predict_files

TRANSFORM = Affine(10.0, 0.0, 400000.0, 0.0, -10.0, 5100000.0)


def _edge_case(seed: int = 0, h: int = 48, w: int = 64, noise: float = 1.2):
    """Two classes split by a vertical edge that the (noisy) image shows clearly."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((h, w), np.int64)
    truth[:, w // 2 + 3 :] = 1
    image = np.where(truth[None] == 1, 190.0, 60.0) + rng.normal(0, 8, (3, h, w))
    image = np.clip(image, 0, 255).astype(np.uint8)
    logits = 0.8 * np.eye(2)[truth].transpose(2, 0, 1) + rng.normal(0, noise, (2, h, w))
    probs = np.exp(logits) / np.exp(logits).sum(0)
    return probs.astype(np.float32), image, truth


def test_output_is_a_distribution_numpy_and_torch() -> None:
    probs, image, _ = _edge_case()
    out = dense_crf(probs, image, n_iter=3)
    assert isinstance(out, np.ndarray) and out.shape == probs.shape and out.dtype == np.float32
    assert out.min() >= 0 and np.allclose(out.sum(0), 1.0, atol=1e-5)
    out_t = dense_crf(torch.from_numpy(probs), torch.from_numpy(image), n_iter=3)
    assert isinstance(out_t, torch.Tensor)
    np.testing.assert_allclose(out_t.numpy(), out, atol=1e-6)
    # one kernel at a time, float image (stretched), more bands than RGB
    for kw in ({"w_bilateral": 0}, {"w_gaussian": 0}):
        q = dense_crf(probs, image.astype(np.float32) * 40 + 1000, n_iter=2, **kw)
        assert np.allclose(q.sum(0), 1.0, atol=1e-5)
    q5 = dense_crf(probs, np.concatenate([image, image[:2]]), n_iter=2)
    assert np.allclose(q5.sum(0), 1.0, atol=1e-5)


def test_crf_raises_accuracy_at_an_image_edge() -> None:
    probs, image, truth = _edge_case()
    before = (probs.argmax(0) == truth).mean()
    refined = dense_crf(probs, image, n_iter=5, sxy_bilateral=20, srgb_bilateral=13)
    after = (refined.argmax(0) == truth).mean()
    assert before < 0.85 and after > 0.97 and after > before + 0.1
    # the appearance kernel puts the edge where the image has it, not just smooths
    f1 = boundary_f1(refined.argmax(0), truth, tolerance=1)["f1"]
    assert f1 > boundary_f1(probs.argmax(0), truth, tolerance=1)["f1"] and f1 > 0.9


def test_zero_iterations_return_input_and_bad_arguments() -> None:
    probs, image, _ = _edge_case()
    assert dense_crf(probs, image, n_iter=0) is probs
    with pytest.raises(ConfigError, match="n_iter"):
        dense_crf(probs, image, n_iter=-1)
    with pytest.raises(ConfigError, match="> 0"):
        dense_crf(probs, image, srgb_bilateral=0)
    with pytest.raises(DataError, match="height/width"):
        dense_crf(probs, image[:, :10])
    with pytest.raises(DataError, match=r"\[C, H, W\]"):
        dense_crf(probs[0], image)


@pytest.mark.parametrize("d", [2, 3])
def test_lattice_approximates_gaussian_filter(d: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(d)
    feats = rng.normal(0, 2, (300, d)).astype(np.float32)
    values = rng.random((2, 300), dtype=np.float32)
    exact = values @ np.exp(-((feats[:, None] - feats[None]) ** 2).sum(-1) / 2)
    approx = PermutohedralLattice(feats).filter(values)
    assert approx.shape == (2, 300)
    assert np.corrcoef(approx.ravel(), exact.ravel())[0, 1] > 0.99
    # hashed keys (used when exact codes would overflow) give the same lattice
    monkeypatch.setattr(crf_module, "_EXACT_LIMIT", 0.0)
    np.testing.assert_allclose(PermutohedralLattice(feats).filter(values), approx, rtol=1e-5)


def test_boundary_mask_and_f1_on_hand_made_masks() -> None:
    truth = np.zeros((20, 20), np.int64)
    truth[:, 10:] = 1
    b = boundary_mask(truth)
    assert b.sum() == 40 and b[:, 9].all() and b[:, 10].all()
    perfect = boundary_f1(truth, truth, tolerance=0, num_classes=2)
    assert perfect["f1"] == perfect["precision"] == perfect["recall"] == 1.0
    assert perfect["per_class_f1"] == [1.0, 1.0]
    shifted = np.zeros_like(truth)
    shifted[:, 12:] = 1  # edge two pixels off
    assert boundary_f1(shifted, truth, tolerance=0)["f1"] == 0.0
    assert boundary_f1(shifted, truth, tolerance=2)["f1"] == 1.0
    half = boundary_f1(shifted, truth, tolerance=1)  # only columns 11 vs 10 meet
    assert half["precision"] == pytest.approx(0.5) and half["recall"] == pytest.approx(0.5)
    # a spurious blob: recall stays 1, precision drops
    blob = truth.copy()
    blob[3:6, 2:5] = 1
    m = boundary_f1(blob, truth, tolerance=1, num_classes=3)
    assert m["recall"] == 1.0 and m["precision"] == pytest.approx(40 / (40 + 8 + 12))
    assert np.isnan(m["per_class_f1"][2]) and m["mean_class_f1"] < 1.0
    # nothing to find and nothing found; ignored pixels; accumulation over images
    assert boundary_f1(np.zeros((5, 5)), np.zeros((5, 5)))["f1"] == 1.0
    ignored = truth.copy()
    ignored[:, 8:12] = 255  # hides both edges
    assert boundary_f1(shifted, ignored, tolerance=0)["f1"] == 1.0
    ignored = truth.copy()
    ignored[:, 9:11] = 255  # hides the true edge only
    assert boundary_f1(shifted, ignored, tolerance=0) == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
    }
    assert boundary_mask(truth, truth != 1).sum() == 0
    acc = BoundaryF1(tolerance=0)
    acc.update(truth, truth)
    acc.update(shifted, truth)
    assert acc.compute()["f1"] == pytest.approx(0.5)
    with pytest.raises(DataError):
        acc.update(truth, truth[:5])
    with pytest.raises(ConfigError):
        BoundaryF1(tolerance=-1)


def _scene(path: Path, h: int = 40, w: int = 56) -> tuple[Path, np.ndarray]:
    _, image, truth = _edge_case(h=h, w=w)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=h,
        width=w,
        count=3,
        dtype="uint8",
        crs="EPSG:32633",
        transform=TRANSFORM,
    ) as dst:
        dst.write(image)
    return path, image


def test_predict_raster_crf_writes_refined_outputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    path, image = _scene(tmp_path / "scene.tif")
    kw = {"sxy_bilateral": 20, "n_iter": 3}
    result = predict_raster_crf(
        model,
        path,
        tmp_path / "o.tif",
        crf_kwargs=kw,
        write_probabilities=True,
        write_uncertainty=True,
        tile_size=32,
        overlap=8,
    )
    expected = dense_crf(
        predict_array(model, image.astype(np.float32), tile_size=32, overlap=8), image, **kw
    )
    with (
        rasterio.open(result.class_map_path) as cls,
        rasterio.open(result.probabilities_path) as proba,
        rasterio.open(result.uncertainty_path) as unc,
    ):
        assert cls.transform == TRANSFORM and unc.transform == TRANSFORM
        assert (cls.read(1) == expected.argmax(0)).all()
        np.testing.assert_allclose(proba.read(), expected, atol=1e-5)
        np.testing.assert_allclose(unc.read(1), predictive_entropy(expected), atol=1e-5)
    assert check_crf_size(path) == (40, 56)
    with pytest.raises(ConfigError, match="tiles"):
        predict_raster_crf(model, path, tmp_path / "p.tif", max_pixels=100)


def test_predict_files_with_tta_crf_and_uncertainty(tmp_path: Path) -> None:
    """A hand-made checkpoint of a 1x1 conv: the options reach the written files."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 2, 1)
    ckpt = tmp_path / "m.ckpt"
    torch.save(
        {
            "polyhead_config": {
                "model": {
                    "_target_": "torch.nn.Conv2d",
                    "in_channels": 3,
                    "out_channels": 2,
                    "kernel_size": 1,
                }
            },
            "state_dict": {f"model.{k}": v for k, v in conv.state_dict().items()},
        },
        ckpt,
    )
    path, _ = _scene(tmp_path / "scene.tif")
    out = tmp_path / "pred"
    model = load_checkpoint(ckpt).model
    written = predict_files(
        model,
        [path],
        out,
        tile_size=32,
        overlap=8,
        progress=False,
        tta="flips+scales=1,1.5",
        crf=True,
        write_uncertainty=True,
    )
    assert written == [out / "scene_classes.tif"]
    assert sorted(p.name for p in out.iterdir()) == ["scene_classes.tif", "scene_uncertainty.tif"]
    plain = predict_files(
        model,
        [path],
        tmp_path / "plain",
        tile_size=32,
        overlap=8,
        progress=False,
        write_uncertainty=True,
        write_probabilities=True,
    )
    assert (tmp_path / "plain" / "scene_uncertainty.tif").is_file() and plain
    with pytest.raises(ConfigError, match="TTA"):
        predict_files(model, [path], out, tta="spin")


def test_crf_path_takes_the_class_table_and_precision(tmp_path: Path) -> None:
    from polyhead.classes import ClassTable

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    path, _ = _scene(tmp_path / "scene.tif")
    table = ClassTable.from_config(["land", {"name": "sea", "color": [0, 0, 200]}], 2)
    result = predict_raster_crf(
        model,
        path,
        tmp_path / "o.tif",
        crf_kwargs={"n_iter": 1},
        write_probabilities=True,
        tile_size=32,
        overlap=8,
        classes=table,
        precision="bf16",
    )
    with rasterio.open(result.class_map_path) as cls, rasterio.open(result.probabilities_path) as p:
        assert cls.colormap(1)[1] == (0, 0, 200, 255)
        assert p.descriptions == ("land", "sea")
