"""aggregate_masks end to end: outputs, agreement with the in-memory EM, bad inputs."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio

import polyhead.aggregation.masks as masks_mod
from polyhead.aggregation import aggregate_masks, dawid_skene, majority_vote_labels
from polyhead.aggregation.inputs import output_names
from polyhead.data import RandomCropSegmentationDataset
from polyhead.demo.synthetic import generate_synthetic_dataset
from polyhead.errors import ConfigError, DataError

from .conftest import random_confusion, sample_labels, write_mask_set, write_tif


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def _no_output(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if ".partial-" in p.name]


def _stacked(masks: dict, k: int) -> np.ndarray:
    """Per-pixel label matrix over every image (CSV order), -1 = no label."""
    names = sorted({a for by in masks.values() for a in by})
    blocks = []
    for by in masks.values():
        shape = next(iter(by.values())).shape
        block = np.full((shape[0] * shape[1], len(names)), -1, np.int64)
        for j, a in enumerate(names):
            if a in by:
                m = by[a].ravel().astype(np.int64)
                block[:, j] = np.where(m == 255, -1, m)
        blocks.append(block)
    return np.concatenate(blocks)


def test_end_to_end_on_synthetic_scenes(tmp_path):
    ds = generate_synthetic_dataset(tmp_path / "syn", n_train=3, n_val=0, size=64, n_classes=4)
    out = tmp_path / "agg"
    res = aggregate_masks(ds.annotator_csv, out, 4, progress=False)
    assert res.converged and res.n_unlabelled == 0 and res.annotators == list(ds.annotators)
    for name in ("confusion.json", "train.csv", "confusion_matrices.png", "loglik.png"):
        assert (out / name).is_file()
    with open(out / "train.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["image"] for r in rows] == [f"../syn/scenes/scene_00{i}.tif" for i in range(3)]
    for row, scene in zip(rows, ds.train_scenes, strict=True):
        soft, hard = _read(out / row["soft_mask"]), _read(out / row["mask"])[0]
        assert soft.dtype == np.float32 and soft.shape == (4, 64, 64)
        np.testing.assert_allclose(soft.sum(axis=0), 1.0, atol=1e-6)
        np.testing.assert_array_equal(hard, soft.argmax(axis=0))
        with (
            rasterio.open(ds.out_dir / "annotators" / "expert" / f"{scene}.tif") as src,
            rasterio.open(out / row["soft_mask"]) as dst,
        ):
            assert dst.crs == src.crs and dst.transform == src.transform
        truth = _read(ds.out_dir / "truth" / f"{scene}.tif")[0]
        assert (hard == truth).mean() > 0.85
    doc = json.loads((out / "confusion.json").read_text())
    assert doc["annotators"] == list(ds.annotators) and len(doc["priors"]) == 4
    assert doc["log_likelihood"] == res.log_likelihood and doc["converged"]
    acc = doc["mean_class_accuracy"]
    assert acc["expert"] > acc["trained"] > acc["novice"]
    data = RandomCropSegmentationDataset(
        out / "train.csv", crop_size=32, n_classes=4, soft_labels=True, samples_per_epoch=2
    )
    item = data[0]
    assert item["targets"]["soft"].shape == (4, 32, 32)


def test_soft_masks_equal_the_in_memory_em(small_set, tmp_path):
    csv_path, masks, _, transforms, k = small_set
    out = tmp_path / "out"
    res = aggregate_masks(csv_path, out, k, tol=1e-8, progress=False)
    assert res.n_unlabelled == 5 and res.annotators == ["a", "b", "c"]
    ref = dawid_skene(_stacked(masks, k), k, tol=1e-8)
    np.testing.assert_allclose(res.confusion, ref.confusion, atol=1e-10)
    assert res.n_iter == ref.n_iter
    start = 0
    for name, by in masks.items():
        h, w = next(iter(by.values())).shape
        soft, hard = _read(out / "soft" / f"{name}.tif"), _read(out / "hard" / f"{name}.tif")[0]
        post = ref.posteriors[start : start + h * w].T.reshape(k, h, w)
        np.testing.assert_allclose(soft, post, atol=1e-6)
        nobody = post.sum(axis=0) == 0
        assert np.all(hard[nobody] == 255) and np.all(soft[:, nobody] == 0)
        np.testing.assert_array_equal(hard[~nobody], post.argmax(axis=0)[~nobody])
        with rasterio.open(out / "hard" / f"{name}.tif") as src:
            assert src.transform == transforms[name] and src.nodata == 255
        start += h * w


def test_majority_method(small_set, tmp_path):
    csv_path, masks, _, _, k = small_set
    res = aggregate_masks(csv_path, tmp_path / "mv", k, method="majority", progress=False)
    assert res.method == "majority" and not (tmp_path / "mv" / "loglik.png").exists()
    labels = _stacked({"img1": masks["img1"]}, k)
    soft = _read(tmp_path / "mv" / "soft" / "img1.tif")
    hard = _read(tmp_path / "mv" / "hard" / "img1.tif")[0]
    votes = np.stack([(labels == c).sum(axis=1) for c in range(k)]) / 3.0
    np.testing.assert_allclose(soft.reshape(k, -1), votes, atol=1e-7)
    np.testing.assert_array_equal(hard.ravel(), majority_vote_labels(labels, k))  # ties: lowest id
    assert json.loads((tmp_path / "mv" / "confusion.json").read_text())["method"] == "majority"


def test_per_image_prior(small_set, tmp_path):
    csv_path, _, _, _, k = small_set
    res = aggregate_masks(csv_path, tmp_path / "pi", k, per_image_prior=True, progress=False)
    assert res.priors.shape == (3, k)
    doc = json.loads((tmp_path / "pi" / "confusion.json").read_text())
    assert set(doc["priors_per_image"]) == {"scenes/img0.tif", "scenes/img1.tif", "scenes/img2.tif"}
    np.testing.assert_allclose(sum(doc["priors"]), 1.0, atol=1e-6)


def test_recovers_confusions_from_geotiffs(tmp_path):
    rng = np.random.default_rng(3)
    k, accs = 4, (0.9, 0.75, 0.6)
    confs = np.stack([random_confusion(rng, k, a) for a in accs])
    masks = {}
    for i in range(4):  # 4 x 224 x 224 = 200k pixels
        truth = rng.integers(0, k, (224, 224))
        masks[f"t{i}"] = {
            n: sample_labels(rng, truth, c).astype(np.uint8)
            for n, c in zip("xyz", confs, strict=True)
        }
    csv_path = write_mask_set(tmp_path / "d", masks)
    res = aggregate_masks(csv_path, tmp_path / "o", k, progress=False)
    assert np.abs(res.confusion - confs).max() < 0.02
    doc = json.loads((tmp_path / "o" / "confusion.json").read_text())
    assert np.abs(np.array([doc["confusion"][n] for n in "xyz"]) - confs).max() < 0.02


def test_images_mapping_names_the_imagery(small_set, tmp_path):
    csv_path, _, _, _, k = small_set
    mapping = {f"scenes/img{i}.tif": f"/data/imagery/{i}.tif" for i in range(3)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = aggregate_masks(csv_path, tmp_path / "m", k, images=mapping, progress=False)
    rows = (tmp_path / "m" / "train.csv").read_text().splitlines()
    assert rows[0] == "image,mask,soft_mask"
    assert [r.split(",")[0].split("/")[-1] for r in rows[1:]] == ["0.tif", "1.tif", "2.tif"]
    assert res.train_csv == (tmp_path / "m" / "train.csv").resolve()


def _rewrite_csv(csv_path: Path, edit) -> Path:
    lines = csv_path.read_text().splitlines()
    new = csv_path.with_name("edited.csv")
    new.write_text("\n".join(edit(lines)) + "\n")
    return new


def test_bad_inputs_name_the_row_and_write_nothing(small_set, tmp_path):
    csv_path, masks, _, _, k = small_set
    root, out = csv_path.parent, tmp_path / "out"

    def fails(path, match, n_classes=k, **kw):
        with pytest.raises(DataError, match=match):
            aggregate_masks(path, out, n_classes, progress=False, **kw)
        _no_output(out)

    # class id >= K (line 5: img1's mask by annotator a)
    write_tif(root / "annotators/a/img1.tif", np.full((24, 32), 9, np.uint8))
    fails(csv_path, r"line 5 .*class id\(s\) 9 outside \[0, 4\)")
    write_tif(root / "annotators/a/img1.tif", masks["img1"]["a"])
    fails(csv_path, r"outside \[0, 3\)", n_classes=3)
    # different sizes for one image
    write_tif(root / "annotators/b/img2.tif", np.zeros((24, 30), np.uint8))
    fails(csv_path, r"line 9 .*24x30 but the mask of the same image on line 8 is 24x32")
    write_tif(root / "annotators/b/img2.tif", masks["img2"]["b"])
    # unreadable and missing files
    (root / "garbage.tif").write_bytes(b"not a tiff at all")
    fails(
        _rewrite_csv(csv_path, lambda ls: [*ls, "scenes/img2.tif,c,garbage.tif"]),
        r"line 10 \(image 'scenes/img2.tif', annotator 'c'.*cannot read",
    )
    fails(
        _rewrite_csv(csv_path, lambda ls: [*ls, "scenes/img2.tif,c,nope.tif"]),
        r"line 10 .*does not exist",
    )
    # a single annotator
    fails(
        _rewrite_csv(csv_path, lambda ls: [ls[0], *[x for x in ls[1:] if ",a," in x]]),
        "only one annotator",
    )
    # the same file twice for one (image, annotator): a repeated rating needs its own file
    fails(
        _rewrite_csv(csv_path, lambda ls: [*ls, ls[1]]),
        "line 10: annotator 'a' already has mask .* on line 2 .*needs its own file",
    )
    # float masks
    write_tif(root / "float.tif", np.zeros((24, 32), np.float32))
    fails(
        _rewrite_csv(csv_path, lambda ls: [*ls, "scenes/img2.tif,c,float.tif"]),
        "float32 is not an integer type",
    )
    with pytest.raises(ConfigError, match="ignore_index=2 is a class id"):
        aggregate_masks(csv_path, out, k, ignore_index=2, progress=False)
    _no_output(out)


def test_image_nobody_labelled(small_set, tmp_path):
    csv_path, masks, _, _, k = small_set
    root, out = csv_path.parent, tmp_path / "out"
    for a in ("a", "b"):
        write_tif(root / f"annotators/{a}/img2.tif", np.full((24, 32), 255, np.uint8))
    with pytest.raises(DataError, match=r"line\(s\) 8, 9: image 'scenes/img2.tif' has no labelled"):
        aggregate_masks(csv_path, out, k, progress=False)
    _no_output(out)
    with pytest.warns(UserWarning, match="img2.tif' has no labelled pixel; skipped"):
        res = aggregate_masks(csv_path, out, k, empty_images="skip", progress=False)
    assert res.skipped == ["scenes/img2.tif"] and len(res.outputs) == 2
    assert not (out / "soft" / "img2.tif").exists()
    assert len((out / "train.csv").read_text().splitlines()) == 3


def test_late_failure_leaves_no_partial_output(small_set, tmp_path, monkeypatch):
    """A file that breaks after pass 1 (while writing outputs) must not leave files behind."""
    csv_path, _, _, _, k = small_set
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    original = masks_mod._labelled_images

    def count_then_break(*args, **kwargs):
        result = original(*args, **kwargs)
        (csv_path.parent / "annotators/b/img2.tif").write_bytes(b"\x00" * 64)
        return result

    monkeypatch.setattr(masks_mod, "_labelled_images", count_then_break)
    with pytest.raises(DataError, match=r"line 9 \(image 'scenes/img2.tif', annotator 'b'"):
        aggregate_masks(csv_path, out, k, progress=False, cache_mb=0)  # pass 2 reads again
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_many_annotators_use_the_sparse_pattern_table(tmp_path):
    """(K+1)^A beyond int64 (A=25, K=6): patterns get ids from a dictionary."""
    rng = np.random.default_rng(5)
    k, truth = 6, rng.integers(0, 6, (16, 16))
    anns = {
        f"ann{j:02d}": sample_labels(rng, truth, random_confusion(rng, k, 0.8)).astype(np.uint8)
        for j in range(25)
    }
    csv_path = write_mask_set(tmp_path / "d", {"only": anns})
    res = aggregate_masks(csv_path, tmp_path / "o", k, progress=False)
    hard = _read(tmp_path / "o" / "hard" / "only.tif")[0]
    assert (hard == truth).mean() > 0.99 and res.n_patterns == 256


def test_output_names_stay_unique():
    assert output_names(["a/x.tif", "b/y.tif"]) == ["x", "y"]
    assert output_names(["a/x.tif", "b/x.tif"]) == ["a__x", "b__x"]
    assert output_names(["a/x.tif", "a/x.png"]) == ["00000_x", "00001_x"]
