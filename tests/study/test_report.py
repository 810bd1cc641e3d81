"""The study's markdown: mean ± std over seeds, one table per reference and setting."""

import pytest

from polyhead.study.report import markdown, mean_confidence, mean_std


def _record(seed: int, miou: float) -> dict:
    metrics = {"miou": miou, "accuracy": 0.9, "ece": 0.1, "nll": 0.3, "brier": 0.2,
               "boundary_f1": 0.8}  # fmt: skip
    bins = [[2.0, 2.0], [0.5, 1.5], [1.0, 2.0]]  # 4 pixels, confidences summing to 2
    return dict(setting="standard", row="1. hard", seed=seed, temperature=1.0, epoch_s=0.5,
                truth=metrics, soft={**metrics, "kl": 0.4}, bins=bins)  # fmt: skip


def test_mean_std_and_mean_confidence():
    assert mean_std([1.0, 3.0]) == "2.0000 ± 1.4142"
    assert mean_std([0.5]) == "0.5000 ± –"
    assert mean_confidence([[2.0, 2.0], [0.5, 1.5], [1.0, 2.0]]) == pytest.approx(0.5)


def test_markdown_tables_aggregate_seeds():
    text = markdown([_record(0, 0.6), _record(1, 0.8)], "# title", {"standard": {"mv": 0.9}})
    assert "## Setting `standard`" in text and "mv 0.900" in text
    truth_row = next(line for line in text.splitlines() if line.startswith("| 1. hard"))
    assert truth_row.split(" | ")[1:3] == ["2", "0.7000 ± 0.1414"]
    assert "0.5000 ± 0.0000" in truth_row  # mean confidence
    assert text.count("| 1. hard |") == 2  # one row against the truth, one against soft masks
