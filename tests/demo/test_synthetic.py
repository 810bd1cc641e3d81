"""Tests for the synthetic demo dataset, vote aggregation and the prediction figure."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import rasterio

from polyhead.demo import (
    SyntheticDataset,
    figure_pixel_size,
    generate_synthetic_dataset,
    majority_vote,
    save_prediction_figure,
    vote_fractions,
)
from polyhead.demo.figures import SOFT_CAPTION, caption_lines
from polyhead.errors import ConfigError, DataError


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def ds(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDataset:
    return generate_synthetic_dataset(
        tmp_path_factory.mktemp("synth"), n_train=2, n_val=1, size=128, seed=3
    )


def test_layout_dtypes_and_georeferencing(ds: SyntheticDataset) -> None:
    assert ds.class_names == ("background", "water", "vegetation", "building")
    assert ds.train_scenes == ["scene_000", "scene_001"] and ds.val_scenes == ["scene_002"]
    origins = set()
    for scene in ds.train_scenes + ds.val_scenes:
        with rasterio.open(ds.out_dir / "scenes" / f"{scene}.tif") as src:
            assert (src.count, src.dtypes[0], src.width, src.height) == (4, "uint16", 128, 128)
            assert src.crs.to_epsg() == 32633 and src.res == (10.0, 10.0)
            transform = src.transform
            origins.add((transform.c, transform.f))
        expected = {"truth": (1, "uint8"), "masks/hard": (1, "uint8"), "masks/soft": (4, "float32")}
        expected.update({f"annotators/{a}": (1, "uint8") for a in ds.annotators})
        for sub, (count, dtype) in expected.items():
            with rasterio.open(ds.out_dir / sub / f"{scene}.tif") as src:
                assert (src.count, src.dtypes[0]) == (count, dtype), sub
                assert src.crs.to_epsg() == 32633 and src.transform == transform, sub
    assert len(origins) == 3


def test_csvs(ds: SyntheticDataset) -> None:
    train, val = _rows(ds.train_csv), _rows(ds.val_csv)
    assert list(train[0]) == ["image", "mask", "soft_mask"]
    assert (len(train), len(val)) == (2, 1)
    ann = _rows(ds.annotator_csv)
    assert list(ann[0]) == ["image", "annotator", "mask"]
    assert len(ann) == 3 * len(ds.annotators)
    for row in train + val + ann:
        for key in ("image", "mask", "soft_mask"):
            if key in row:
                assert not Path(row[key]).is_absolute()
                assert (ds.out_dir / row[key]).is_file()


def test_soft_and_hard_masks_follow_the_votes(ds: SyntheticDataset) -> None:
    ann = _rows(ds.annotator_csv)
    tie_order = sorted(range(len(ds.annotators)), key=lambda i: -ds.reliabilities[ds.annotators[i]])
    for row in _rows(ds.train_csv) + _rows(ds.val_csv):
        votes = np.stack(
            [_read(ds.out_dir / r["mask"])[0] for r in ann if r["image"] == row["image"]]
        )
        soft = _read(ds.out_dir / row["soft_mask"])
        hard = _read(ds.out_dir / row["mask"])[0]
        assert np.all(soft.sum(axis=0, dtype=np.float32) == 1.0)
        np.testing.assert_array_equal(soft, vote_fractions(votes, 4))
        np.testing.assert_array_equal(hard, majority_vote(votes, 4, tie_order))
        # the hard label always has the maximal vote fraction
        chosen = np.take_along_axis(soft, hard[None].astype(np.intp), axis=0)[0]
        assert np.all(chosen >= soft.max(axis=0) - 1e-6)
        # three different labels: the most reliable annotator ("expert") wins
        all_differ = (votes[0] != votes[1]) & (votes[1] != votes[2]) & (votes[0] != votes[2])
        np.testing.assert_array_equal(hard[all_differ], votes[0][all_differ])


def test_majority_vote_hand_made_ties() -> None:
    masks = np.array([[[0, 1, 2]], [[1, 1, 0]], [[2, 0, 1]]], dtype=np.uint8)  # [A=3, 1, 3]
    np.testing.assert_array_equal(majority_vote(masks, 3), [[0, 1, 2]])
    np.testing.assert_array_equal(majority_vote(masks, 3, tie_order=[1, 0, 2]), [[1, 1, 0]])
    np.testing.assert_array_equal(majority_vote(masks, 3, tie_order=[2, 1, 0]), [[2, 1, 1]])
    # classes 0 and 1 tie with 2 votes; annotator 0 voted 2 (not tied) so it is skipped
    five = np.array([2, 0, 0, 1, 1], dtype=np.uint8).reshape(5, 1, 1)
    assert majority_vote(five, 3)[0, 0] == 0
    assert majority_vote(five, 3, tie_order=[0, 3, 1, 2, 4])[0, 0] == 1
    with pytest.raises(DataError):
        majority_vote(np.full((2, 1, 1), 3), 3)
    with pytest.raises(ConfigError):
        majority_vote(five, 3, tie_order=[0, 1])


def test_vote_fractions_sum_exactly_to_one() -> None:
    rng = np.random.default_rng(0)
    for n_ann in (3, 5, 7):
        masks = rng.integers(0, 5, size=(n_ann, 16, 16))
        frac = vote_fractions(masks, 5)
        assert frac.dtype == np.float32 and frac.shape == (5, 16, 16)
        assert np.all(frac.sum(axis=0, dtype=np.float32) == 1.0)
        np.testing.assert_allclose(frac, vote_fractions(masks, 5), atol=0)
        np.testing.assert_allclose(frac[2], (masks == 2).mean(axis=0), atol=1e-6)


def test_annotator_accuracy_matches_reliability(ds: SyntheticDataset) -> None:
    acc = {}
    for a in ds.annotators:
        hits = total = 0
        for scene in ds.train_scenes + ds.val_scenes:
            truth = _read(ds.out_dir / "truth" / f"{scene}.tif")
            mask = _read(ds.out_dir / "annotators" / a / f"{scene}.tif")
            hits += int((truth == mask).sum())
            total += truth.size
        acc[a] = hits / total
        assert abs(acc[a] - ds.reliabilities[a]) < 0.1, (a, acc[a])
        assert acc[a] == pytest.approx(ds.measured_accuracy[a])
    ordered = sorted(ds.annotators, key=lambda a: -ds.reliabilities[a])
    assert [acc[a] for a in ordered] == sorted(acc.values(), reverse=True)
    # errors are regions, not salt-and-pepper: most wrong pixels have wrong 4-neighbours
    scene = ds.train_scenes[0]
    wrong = (
        _read(ds.out_dir / "truth" / f"{scene}.tif")
        != _read(ds.out_dir / "annotators" / "novice" / f"{scene}.tif")
    )[0]
    inner = wrong[1:-1, 1:-1]
    neigh = wrong[:-2, 1:-1] & wrong[2:, 1:-1] & wrong[1:-1, :-2] & wrong[1:-1, 2:]
    assert (inner & neigh).sum() > 0.5 * inner.sum()


def test_deterministic(tmp_path: Path) -> None:
    runs = [
        generate_synthetic_dataset(
            tmp_path / name, n_train=1, n_val=1, size=64, n_classes=6, bands=6, seed=seed
        )
        for name, seed in (("a", 7), ("b", 7), ("c", 8))
    ]
    files = sorted(p.relative_to(runs[0].out_dir) for p in runs[0].out_dir.rglob("*.tif"))
    assert len(files) == 2 * (1 + 1 + 3 + 2)
    assert _read(runs[0].out_dir / "scenes/scene_000.tif").shape == (6, 64, 64)
    assert _read(runs[0].out_dir / "masks/soft/scene_000.tif").shape == (6, 64, 64)
    for rel in files:
        np.testing.assert_array_equal(_read(runs[0].out_dir / rel), _read(runs[1].out_dir / rel))
    assert (runs[0].out_dir / "train.csv").read_text() == (
        runs[1].out_dir / "train.csv"
    ).read_text()
    assert not np.array_equal(
        _read(runs[0].out_dir / "scenes/scene_000.tif"),
        _read(runs[2].out_dir / "scenes/scene_000.tif"),
    )


def test_bad_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        generate_synthetic_dataset(tmp_path, n_classes=9)
    with pytest.raises(ConfigError):
        generate_synthetic_dataset(tmp_path, annotators={"x": 1.5})


def test_prediction_figure(ds: SyntheticDataset, tmp_path: Path) -> None:
    scenes = ds.train_scenes
    images = [_read(ds.out_dir / "scenes" / f"{s}.tif") for s in scenes]
    hard = np.stack([_read(ds.out_dir / "masks/hard" / f"{s}.tif")[0] for s in scenes])
    soft = np.stack([_read(ds.out_dir / "masks/soft" / f"{s}.tif") for s in scenes])
    truth = np.stack([_read(ds.out_dir / "truth" / f"{s}.tif")[0] for s in scenes])
    out = save_prediction_figure(
        tmp_path / "fig.png",
        images,
        hard,
        soft,
        {"head A": truth, "head B": hard},
        ds.class_names,
        panel_px=96,
    )
    png = mpimg.imread(out)
    lines = caption_lines(SOFT_CAPTION, 5 * 96, 5.0)  # the soft mask's default caption
    assert len(lines) > 1
    assert png.shape[:2][::-1] == figure_pixel_size(2, 5, 96, caption_lines=len(lines))
    assert png[..., :3].std() > 0.05  # not blank
    one = save_prediction_figure(
        tmp_path / "one.png",
        images[0],
        None,
        None,
        {"head A": truth[0]},
        ds.class_names,
        panel_px=64,
    )
    assert mpimg.imread(one).shape[:2][::-1] == figure_pixel_size(1, 2, 64)
    labelled = save_prediction_figure(
        tmp_path / "labelled.png",
        images,
        hard,
        None,
        {"head A": truth},
        ds.class_names,
        panel_px=64,
        row_titles=scenes,
        truth=truth,
        caption="one line",
    )
    size = figure_pixel_size(2, 4, 64, row_labels=True, caption_lines=1)
    assert mpimg.imread(labelled).shape[:2][::-1] == size
    with pytest.raises(DataError, match="row_titles has 1 entries but image has 2 rows"):
        save_prediction_figure(tmp_path / "bad.png", images, None, None, {}, ds.class_names,
                               row_titles=scenes[:1])  # fmt: skip
    with pytest.raises(DataError, match="truth has 1 rows but image has 2"):
        save_prediction_figure(tmp_path / "bad.png", images, None, None, {}, ds.class_names,
                               truth=truth[:1])  # fmt: skip
    with pytest.raises(DataError):
        save_prediction_figure(tmp_path / "bad.png", images, hard[:1], None, {}, ds.class_names)
