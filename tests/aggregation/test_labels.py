"""Classification CSVs (item,annotator,label) and the ``aggregate`` sub-command."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from polyhead.aggregation import aggregate_labels
from polyhead.aggregation.cli import add_aggregate_parser
from polyhead.errors import DataError

from .conftest import simulate

# crowd-kit 1.4 trips pandas deprecation warnings on every EM step
pytestmark = pytest.mark.filterwarnings("ignore:::crowdkit")


def _write_label_csv(path: Path, labels: np.ndarray, names=("ann_a", "ann_b", "ann_c")) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["item", "annotator", "label"])
        for i, row in enumerate(labels):
            for a, lab in enumerate(row):
                if lab >= 0:
                    w.writerow([f"item{i:05d}", names[a], int(lab)])
    return path


def _read_labels(path: Path) -> tuple[list[dict], np.ndarray]:
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    probs = np.array([[float(r[c]) for c in r if c.startswith("p_")] for r in rows])
    return rows, probs


def test_labels_csv_matches_crowdkit(tmp_path):
    crowdkit = pytest.importorskip("crowdkit.aggregation")
    pd = pytest.importorskip("pandas")
    _, labels, _, _ = simulate(21, 2000, 4, (0.85, 0.7, 0.55), missing=0.25)
    csv_path = _write_label_csv(tmp_path / "labels_in.csv", labels)
    res = aggregate_labels(csv_path, tmp_path / "out", 4, smoothing=0.0, tol=0.0, max_iter=25)
    rows, probs = _read_labels(tmp_path / "out" / "labels.csv")
    assert len(rows) == 2000 and rows[0]["item"] == "item00000"
    df = pd.read_csv(csv_path).rename(columns={"item": "task", "annotator": "worker"})
    ck = crowdkit.DawidSkene(n_iter=25, tol=-np.inf).fit(df).probas_
    expected = ck.loc[[r["item"] for r in rows], [0, 1, 2, 3]].to_numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert [int(r["label"]) for r in rows] == probs.argmax(axis=1).tolist()
    doc = json.loads((tmp_path / "out" / "confusion.json").read_text())
    assert doc["annotators"] == ["ann_a", "ann_b", "ann_c"] and res.n_iter == 25
    assert (tmp_path / "out" / "confusion_matrices.png").is_file()


def test_labels_majority_and_empty_cells(tmp_path):
    text = "item,annotator,label\nx,a,1\nx,b,1\ny,a,0\ny,b,2\nz,a,\nz,b,255\nw,a,2\nw,b,2\n"
    (tmp_path / "in.csv").write_text(text)
    with pytest.raises(DataError, match=r"1 item\(s\) without any label, e.g. \['z'\]"):
        aggregate_labels(tmp_path / "in.csv", tmp_path / "o", 3, method="majority")
    assert not (tmp_path / "o").exists()
    with pytest.warns(UserWarning, match="without any label"):
        aggregate_labels(
            tmp_path / "in.csv", tmp_path / "o", 3, method="majority", empty_items="keep"
        )
    rows, probs = _read_labels(tmp_path / "o" / "labels.csv")
    assert [r["label"] for r in rows] == ["1", "0", "255", "2"]  # y: tie -> lowest class id
    np.testing.assert_allclose(probs[1], [0.5, 0, 0.5])
    assert np.all(probs[2] == 0)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("x,a,1\nx,b,3\n", r"line 3 \(item 'x', annotator 'b'\): label 3 outside \[0, 3\)"),
        ("x,a,1\nx,b,cat\n", "line 3 .*'cat' is not an integer class id"),
        ("x,a,1\ny,a,2\n", "only one annotator"),
        ("", "no rows"),
    ],
)
def test_label_csv_errors(tmp_path, body, match):
    (tmp_path / "in.csv").write_text("item,annotator,label\n" + body)
    with pytest.raises(DataError, match=match):
        aggregate_labels(tmp_path / "in.csv", tmp_path / "o", 3)
    assert not (tmp_path / "o").exists()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="polyhead")
    add_aggregate_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_detects_the_kind(tmp_path, small_set, capsys):
    _, labels, _, _ = simulate(22, 300, 3, (0.9, 0.7, 0.6))
    lab_csv = _write_label_csv(tmp_path / "l.csv", labels)
    args = _parser().parse_args(
        ["aggregate", str(lab_csv), "--out", str(tmp_path / "lo"), "--n-classes", "3"]
    )
    assert args.func(args) == 0 and (tmp_path / "lo" / "labels.csv").is_file()
    mask_csv, *_ = small_set
    args = _parser().parse_args(
        [
            "aggregate",
            str(mask_csv),
            "-o",
            str(tmp_path / "mo"),
            "--n-classes",
            "4",
            "--method",
            "majority",
            "--no-progress",
        ]
    )
    assert args.func(args) == 0 and (tmp_path / "mo" / "train.csv").is_file()
    assert "wrote 3 soft masks" in capsys.readouterr().err
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    args = _parser().parse_args(
        ["aggregate", str(tmp_path / "bad.csv"), "-o", str(tmp_path / "x"), "--n-classes", "3"]
    )
    with pytest.raises(DataError, match="neither image,annotator,mask"):
        args.func(args)


def test_cli_class_names_and_one_named_score(tmp_path, small_set, capsys):
    from polyhead.cli import main

    csv_path = small_set[0]
    classes = tmp_path / "classes.yaml"
    classes.write_text("- water\n- {name: forest, color: '#00ff00'}\n- sand\n- rock\n")
    assert (
        main(
            [
                "aggregate",
                str(csv_path),
                "-o",
                str(tmp_path / "o"),
                "--n-classes",
                "4",
                "--classes",
                str(classes),
                "--no-progress",
            ]
        )
        == 0
    )
    doc = json.loads((tmp_path / "o" / "confusion.json").read_text())
    assert doc["class_names"] == ["water", "forest", "sand", "rock"]
    err = capsys.readouterr().err
    for name, score in doc["mean_class_accuracy"].items():
        assert f"{name}: mean per-class accuracy {score:.3f}" in err
    code = main(
        ["aggregate", str(csv_path), "-o", str(tmp_path / "p"), "--n-classes", "4",
         "--class-names", "a,b"]
    )  # fmt: skip
    assert code != 0 and "--class-names: 2 class names for --n-classes 4" in capsys.readouterr().err
