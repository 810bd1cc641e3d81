"""Repeated ratings, gold labels and annotator priors (labels and masks)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from polyhead.aggregation import aggregate_labels, aggregate_masks, dawid_skene_sparse
from polyhead.aggregation.priors import load_annotator_priors
from polyhead.errors import ConfigError, DataError

from .conftest import random_confusion, sample_labels, write_tif

pytestmark = pytest.mark.filterwarnings("ignore:::crowdkit")
DS1979 = Path(__file__).parent / "data" / "dawid_skene_1979.csv"
# Dawid & Skene (1979), as printed (2 decimals) by public reimplementations run on the
# paper's data (e.g. alexandry-augustin/dawid_skene, out/original_paper): class marginals,
# observer 1's error rates (rows: true class) and each patient's most probable class
DS1979_PI = (0.40, 0.42, 0.11, 0.07)
DS1979_OBSERVER1 = (
    (0.89, 0.11, 0.0, 0.0),
    (0.07, 0.88, 0.05, 0.0),
    (0.0, 0.34, 0.66, 0.0),
    (0.0, 0.0, 0.56, 0.44),
)
DS1979_CLASSES = "142222132243121111222222112111131224233111212"


def _zero_based(path: Path, out: Path) -> Path:
    """The 1979 fixture with classes 1..4 shifted to ids 0..3."""
    with open(path) as fh, open(out, "w", newline="") as dst:
        writer = csv.writer(dst)
        writer.writerow(["item", "annotator", "label"])
        for row in csv.DictReader(fh):
            writer.writerow([row["item"], row["annotator"], int(row["label"]) - 1])
    return out


def _read_probs(path: Path) -> tuple[list[str], np.ndarray]:
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    return [r["item"] for r in rows], np.array(
        [[float(r[f"p_{c}"]) for c in range(4)] for r in rows]
    )


def test_dawid_skene_1979_reproduces_the_paper(tmp_path):
    """Observer 1 rated every patient three times: all 315 ratings count, and EM from the
    majority start lands on the paper's class proportions. They are printed to 2 decimals,
    so 0.005 is their rounding; 0.01 leaves as much again for the stopping rule."""
    src = _zero_based(DS1979, tmp_path / "ds.csv")
    res = aggregate_labels(src, tmp_path / "out", 4, smoothing=0.0, tol=1e-10, max_iter=1000)
    np.testing.assert_allclose(res.priors, DS1979_PI, atol=0.01)
    np.testing.assert_allclose(res.confusion[0], DS1979_OBSERVER1, atol=0.01)
    items, probs = _read_probs(tmp_path / "out" / "labels.csv")
    assert items == [str(i) for i in range(1, 46)]
    assert "".join(str(c + 1) for c in probs.argmax(axis=1)) == DS1979_CLASSES
    doc = json.loads((tmp_path / "out" / "confusion.json").read_text())
    assert doc["labels_per_annotator"] == {"1": 135, "2": 45, "3": 45, "4": 45, "5": 45}
    assert res.converged and res.n_labelled == 45


def test_dawid_skene_1979_equals_crowdkit_with_repeats(tmp_path):
    crowdkit = pytest.importorskip("crowdkit.aggregation")
    pd = pytest.importorskip("pandas")
    src = _zero_based(DS1979, tmp_path / "ds.csv")
    aggregate_labels(src, tmp_path / "out", 4, smoothing=0.0, tol=0.0, max_iter=25)
    items, probs = _read_probs(tmp_path / "out" / "labels.csv")
    df = pd.read_csv(src, dtype={"item": str, "annotator": str})
    df = df.rename(columns={"item": "task", "annotator": "worker"})
    ck = crowdkit.DawidSkene(n_iter=25, tol=-np.inf).fit(df).probas_
    np.testing.assert_allclose(probs, ck.loc[items, [0, 1, 2, 3]].to_numpy(), atol=1e-7)


def _colluders(seed: int, n: int = 1000, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Truth and labels of 2 honest annotators (90 %) and 3 who agree on a wrong class."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, n)
    honest = [sample_labels(rng, truth, random_confusion(rng, k, 0.9)) for _ in range(2)]
    shifted = np.eye(k)[(np.arange(k) + 1) % k] * 0.9 + (1 - np.eye(k)[(np.arange(k) + 1) % k]) * (
        0.1 / (k - 1)
    )
    colluding = [sample_labels(rng, truth, shifted) for _ in range(3)]
    return truth, np.stack(honest + colluding, axis=1)


def _write_labels(path: Path, labels: np.ndarray) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["item", "annotator", "label"])
        for i, row in enumerate(labels):
            w.writerows([f"i{i}", f"ann{a}", int(v)] for a, v in enumerate(row))
    return path


def test_gold_on_5_percent_beats_colluding_majority(tmp_path):
    truth, labels = _colluders(0)
    src = _write_labels(tmp_path / "in.csv", labels)
    gold_idx = np.random.default_rng(1).choice(truth.size, truth.size // 20, replace=False)
    gold = tmp_path / "gold.csv"
    gold.write_text("item,label\n" + "".join(f"i{i},{truth[i]}\n" for i in gold_idx))
    for name, kw in (("mv", dict(method="majority")), ("ds", {}), ("gold", dict(gold=gold))):
        aggregate_labels(src, tmp_path / name, 3, **kw)
    acc = {}
    for name in ("mv", "ds", "gold"):
        items, probs = _read_probs_k(tmp_path / name / "labels.csv", 3)
        acc[name] = float((probs.argmax(axis=1) == truth[[int(i[1:]) for i in items]]).mean())
    assert acc["mv"] < 0.2 and acc["ds"] < 0.2  # the colluders win without gold
    assert acc["gold"] > 0.97
    _, probs = _read_probs_k(tmp_path / "gold" / "labels.csv", 3)
    np.testing.assert_array_equal(probs[gold_idx], np.eye(3)[truth[gold_idx]])


def _read_probs_k(path: Path, k: int) -> tuple[list[str], np.ndarray]:
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    return [r["item"] for r in rows], np.array(
        [[float(r[f"p_{c}"]) for c in range(k)] for r in rows]
    )


def test_gold_errors_name_the_line(tmp_path):
    src = _write_labels(tmp_path / "in.csv", np.array([[0, 1], [1, 1]]))
    for body, match in (
        ("item,label\ni9,0\n", r"gold.csv, line 2: item 'i9' is not in"),
        ("item,label\ni0,7\n", r"gold.csv, line 2: label '7' is not a class id in \[0, 2\)"),
        ("item,label\ni0,0\ni0,1\n", r"line 3: item 'i0' has two different gold labels"),
    ):
        (tmp_path / "gold.csv").write_text(body)
        with pytest.raises(DataError, match=match):
            aggregate_labels(src, tmp_path / "out", 2, gold=tmp_path / "gold.csv")
        assert not (tmp_path / "out").exists()


def test_priors_file_pseudo_counts_and_errors(tmp_path):
    path = tmp_path / "priors.yaml"
    path.write_text(
        "a: {accuracy: 0.8, strength: 10}\n"
        "b: {confusion: [[3, 1, 0], [0, 1, 0], [1, 1, 2]], strength: 4}\n"
        "'*': {accuracy: 0.5, strength: 2}\n"
    )
    prior = load_annotator_priors(path, ["a", "b", "c"], 3)
    np.testing.assert_allclose(prior[0], [[8, 1, 1], [1, 8, 1], [1, 1, 8]])
    np.testing.assert_allclose(prior[1], [[3, 1, 0], [0, 4, 0], [1, 1, 2]])
    np.testing.assert_allclose(prior[2], [[1, 0.5, 0.5], [0.5, 1, 0.5], [0.5, 0.5, 1]])
    for body, match in (
        ("z: {accuracy: 0.8, strength: 1}\n", r"priors.yaml: key 'z' is no annotator"),
        ("a: {accuracy: 1.5, strength: 1}\n", r"key 'a': accuracy must be a number in \[0, 1\]"),
        ("a: {accuracy: 0.5}\n", r"key 'a': strength must be a number"),
        ("a: {confusion: [[1, 0]], strength: 1}\n", r"key 'a': confusion must be 3 x 3"),
        ("a: [1, 2\n", r"priors.yaml: not valid YAML/JSON"),
    ):
        path.write_text(body)
        with pytest.raises(ConfigError, match=match):
            load_annotator_priors(path, ["a", "b", "c"], 3)


def test_strong_prior_pins_the_confusion_and_fixes_colluders(tmp_path):
    truth, labels = _colluders(2)
    src = _write_labels(tmp_path / "in.csv", labels)
    shift = [[0.05, 0.9, 0.05], [0.05, 0.05, 0.9], [0.9, 0.05, 0.05]]
    priors = {f"ann{a}": {"confusion": shift, "strength": 1e6} for a in (2, 3, 4)}
    res = aggregate_labels(src, tmp_path / "out", 3, priors=priors)
    np.testing.assert_allclose(res.confusion[2:], np.broadcast_to(shift, (3, 3, 3)), atol=1e-3)
    items, probs = _read_probs_k(tmp_path / "out" / "labels.csv", 3)
    assert (probs.argmax(axis=1) == truth[[int(i[1:]) for i in items]]).mean() > 0.97


def _mask_csv(root: Path, rows: list[tuple[str, str, str]], extra: str = "") -> Path:
    path = root / "annotators.csv"
    header = "image,annotator,mask" + ("," + extra if extra else "")
    path.write_text(header + "\n" + "".join(",".join(r) + "\n" for r in rows))
    return path


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


@pytest.fixture
def repeated_set(tmp_path):
    """Two images of 20 x 24, 4 classes; annotator 'a' labels img0 twice; gold for img1."""
    rng = np.random.default_rng(11)
    k, shape = 4, (20, 24)
    confs = {a: random_confusion(rng, k, acc) for a, acc in (("a", 0.8), ("b", 0.7))}
    root = tmp_path / "d"
    rows, masks, truths = [], {}, {}
    for img, takes in (("img0", ("a", "a", "b")), ("img1", ("a", "b"))):
        truths[img] = rng.integers(0, k, shape)
        write_tif(root / f"{img}.tif", np.zeros(shape, np.uint8))
        for j, ann in enumerate(takes):
            arr = sample_labels(rng, truths[img], confs[ann]).astype(np.uint8)
            write_tif(root / f"{ann}_{img}_{j}.tif", arr)
            rows.append((f"{img}.tif", ann, f"{ann}_{img}_{j}.tif"))
            masks.setdefault(img, []).append((ann, arr))
    gold = truths["img1"].astype(np.uint8)
    gold[:10] = 255  # gold on the lower half only
    write_tif(root / "gold_img1.tif", gold)
    return root, rows, masks, gold, k


def _pixel_reference(masks, k, gold=None, **kw):
    """Dawid-Skene on per-pixel triplets (every mask one rating)."""
    rows, anns, labs, offset, gold_px = [], [], [], 0, []
    for img, takes in masks.items():
        n = takes[0][1].size
        for ann, arr in takes:
            rows.append(np.arange(n) + offset)
            anns.append(np.full(n, "ab".index(ann)))
            labs.append(arr.ravel())
        g = gold.get(img) if gold else None
        gold_px.append(
            np.full(n, -1) if g is None else np.where(g == 255, -1, g.astype(np.int64)).ravel()
        )
        offset += n
    cat = np.concatenate
    return dawid_skene_sparse(
        cat(rows), cat(anns), cat(labs), k, gold=cat(gold_px) if gold else None, **kw
    )


def test_repeated_masks_count_as_ratings(repeated_set):
    root, rows, masks, _, k = repeated_set
    csv_path = _mask_csv(root, [r for r in rows])
    res = aggregate_masks(csv_path, root / "out", k, tol=1e-9, progress=False)
    ref = _pixel_reference(masks, k, tol=1e-9)
    np.testing.assert_allclose(res.confusion, ref.confusion, atol=1e-10)
    soft = _read(root / "out" / "soft" / "img0.tif")
    np.testing.assert_allclose(soft.reshape(k, -1), ref.posteriors[:480].T, atol=1e-6)
    doc = json.loads((root / "out" / "confusion.json").read_text())
    assert doc["labelled_pixels_per_annotator"] == {"a": 3 * 480, "b": 2 * 480}
    assert doc["n_rating_slots"] == 3


@pytest.mark.parametrize("how", ["column", "file"])
def test_gold_mask_fixes_its_pixels(repeated_set, how):
    root, rows, masks, gold, k = repeated_set
    if how == "column":
        cells = [(*r, "gold_img1.tif" if r[0] == "img1.tif" else "") for r in rows]
        csv_path, kw = _mask_csv(root, cells, "gold_mask"), {}
    else:
        csv_path = _mask_csv(root, rows)
        (root / "gold.csv").write_text("image,gold_mask\nimg1.tif,gold_img1.tif\n")
        kw = {"gold": root / "gold.csv"}
    res = aggregate_masks(csv_path, root / "out", k, tol=1e-9, progress=False, **kw)
    ref = _pixel_reference(masks, k, gold={"img1": gold}, tol=1e-9)
    np.testing.assert_allclose(res.confusion, ref.confusion, atol=1e-10)
    soft = _read(root / "out" / "soft" / "img1.tif")
    hard = _read(root / "out" / "hard" / "img1.tif")[0]
    np.testing.assert_allclose(soft.reshape(k, -1), ref.posteriors[480:].T, atol=1e-6)
    np.testing.assert_array_equal(hard[10:], gold[10:])
    np.testing.assert_array_equal(
        soft[:, 10:], np.eye(k, dtype=np.float32)[gold[10:]].transpose(2, 0, 1)
    )
    doc = json.loads((root / "out" / "confusion.json").read_text())
    assert doc["n_gold_pixels"] == 240


def test_gold_mask_errors(repeated_set):
    root, rows, _, _, k = repeated_set
    csv_path = _mask_csv(root, rows)
    (root / "gold.csv").write_text("image,gold_mask\nnope.tif,gold_img1.tif\n")
    with pytest.raises(DataError, match=r"gold.csv, line 2: image 'nope.tif' is not in"):
        aggregate_masks(csv_path, root / "out", k, gold=root / "gold.csv", progress=False)
    write_tif(root / "bad_gold.tif", np.full((20, 24), 7, np.uint8))
    (root / "gold.csv").write_text("image,gold_mask\nimg1.tif,bad_gold.tif\n")
    with pytest.raises(DataError, match=r"gold.csv, line 2 .*annotator 'gold'.*class id\(s\) 7"):
        aggregate_masks(csv_path, root / "out", k, gold=root / "gold.csv", progress=False)
    assert not (root / "out").exists()


def test_cli_gold_and_priors_for_masks(repeated_set, capsys):
    from polyhead.cli import main

    root, rows, _, _, k = repeated_set
    csv_path = _mask_csv(root, rows)
    (root / "gold.csv").write_text("image,gold_mask\nimg1.tif,gold_img1.tif\n")
    (root / "priors.json").write_text('{"a": {"accuracy": 0.8, "strength": 1e6}}')
    args = ["aggregate", str(csv_path), "-o", str(root / "out"), "--n-classes", str(k)]
    args += ["--gold", str(root / "gold.csv"), "--priors", str(root / "priors.json")]
    assert main([*args, "--no-progress"]) == 0
    doc = json.loads((root / "out" / "confusion.json").read_text())
    assert doc["n_gold_pixels"] == 240
    np.testing.assert_allclose(np.diag(doc["confusion"]["a"]), 0.8, atol=1e-4)
    (root / "priors.json").write_text('{"zed": {"accuracy": 0.8, "strength": 1}}')
    assert main([*args, "-o", str(root / "out2")]) != 0
    assert "priors.json: key 'zed' is no annotator" in capsys.readouterr().err
