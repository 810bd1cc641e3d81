"""Image-level targets from CSV columns or the crop, missing targets per head, check-data counts."""

import csv

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from polyhead.data import RandomCropSegmentationDataset
from polyhead.data.validation import check_data
from polyhead.errors import ConfigError, DataError
from tests.data.conftest import N_CLASSES, write_tif


def _add_columns(csv_path, columns):
    """Append columns (``{name: [cell per row]}``) to a CSV; clear cells with ``""``."""
    with open(csv_path, newline="") as fh:
        rows = list(csv.reader(fh))
    rows[0] += list(columns)
    for i, row in enumerate(rows[1:]):
        row += [cells[i] for cells in columns.values()]
    with open(csv_path, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)


def _set_cell(csv_path, row, column, value):
    with open(csv_path, newline="") as fh:
        rows = list(csv.reader(fh))
    rows[row][rows[0].index(column)] = value
    with open(csv_path, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)


def _dataset(seg_set, **kwargs):
    options = {"crop_size": 16, "n_classes": N_CLASSES, "grid_mode": True, "soft_labels": True}
    return RandomCropSegmentationDataset(seg_set.csv, **{**options, **kwargs})


SPECS = {
    "land": {"column": "land", "kind": "class", "classes": 3},
    "tags": {"columns": ["water", "road"], "kind": "binary"},
    "height": "height",
    "cover": {"fraction_of": "hard"},
}


def test_image_targets_present_flags_and_collation(seg_set):
    _add_columns(
        seg_set.csv,
        {
            "land": ["2", "", "0"],
            "water": ["1", "0", ""],
            "road": ["0", "1", ""],
            "height": ["1.5", "2.5", "-3"],
        },
    )
    _set_cell(seg_set.csv, 2, "soft_mask", "")  # row 2: no soft mask
    ds = _dataset(seg_set, image_targets=SPECS)
    first, second = ds[0], ds[len(ds) - 1]  # tiles of row 1 and row 3
    assert first["targets"]["land"].dtype == torch.int64 and int(first["targets"]["land"]) == 2
    assert first["targets"]["tags"].tolist() == [1.0, 0.0]
    assert first["targets"]["height"].tolist() == [1.5]
    assert first["present"] == {
        "soft": True,
        "land": True,
        "tags": True,
        "height": True,
        "cover": True,
    }
    assert second["present"]["tags"] is False and second["targets"]["tags"].tolist() == [0, 0]
    # fraction_of hard: the share of each class among the crop's labelled pixels
    hard = first["targets"]["hard"]
    labelled = hard[hard != 255]
    expected = torch.bincount(labelled, minlength=N_CLASSES).float() / labelled.numel()
    torch.testing.assert_close(first["targets"]["cover"], expected)
    row2 = [ds[i] for i in range(len(ds)) if int(ds[i]["window"][0]) == 1]
    assert all(not it["present"]["soft"] and not it["present"]["land"] for it in row2)
    assert all(float(it["targets"]["soft"].abs().sum()) == 0 for it in row2)
    batch = default_collate([first, row2[0]])
    assert batch["present"]["soft"].dtype == torch.bool
    assert batch["present"]["soft"].tolist() == [True, False]
    assert batch["targets"]["land"].shape == (2,) and batch["targets"]["tags"].shape == (2, 2)
    counts = ds.summary.target_counts
    assert counts["soft_mask"] == (2, 1) and counts["land"] == (2, 1) and counts["water"] == (2, 1)
    assert counts["tags"] == (2, 1) and counts["cover"] == (3, 0)


@pytest.mark.parametrize(
    ("cells", "spec", "expected"),
    [
        (
            ["2", "x", "0"],
            {"column": "land", "kind": "class"},
            "row 2 (image img_1.tif): land is 'x'",
        ),
        (["2", "3", "0"], {"column": "land", "kind": "class", "classes": 3}, "in [0, 3)"),
        (["1", "0.5", "0"], {"columns": ["land"], "kind": "binary"}, "0 or 1"),
        (["", "", ""], "land", "every cell of land is empty"),
    ],
)
def test_bad_image_target_cells_name_row_and_column(seg_set, cells, spec, expected):
    _add_columns(seg_set.csv, {"land": cells})
    with pytest.raises(DataError, match="data.csv") as info:
        _dataset(seg_set, image_targets={"land": spec})
    assert expected in str(info.value)


def test_partly_filled_vector_target_and_bad_specs(seg_set):
    _add_columns(seg_set.csv, {"a": ["1", "1", "1"], "b": ["2", "", "2"]})
    with pytest.raises(DataError, match=r"row 2 .*empty b while other columns"):
        _dataset(seg_set, image_targets={"v": {"columns": ["a", "b"]}})
    with pytest.raises(DataError, match="image_targets column"):
        _dataset(seg_set, image_targets={"v": "missing"})
    with pytest.raises(ConfigError, match="reserved"):
        _dataset(seg_set, image_targets={"hard": "a"})
    with pytest.raises(ConfigError, match="fraction_of"):
        _dataset(seg_set, image_targets={"v": {"fraction_of": "soft"}})


def test_check_data_counts_rows_with_and_without_each_target(seg_set):
    _add_columns(seg_set.csv, {"land": ["1", "", ""]})
    _set_cell(seg_set.csv, 3, "soft_mask", "")
    summary = check_data(seg_set.csv, N_CLASSES)
    assert summary.soft_labels
    assert summary.target_counts == {"soft_mask": (2, 1), "land": (1, 2)}
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(summary.to_table())
    text = console.export_text()
    assert "Targets per column" in text and "soft_mask" in text


def test_all_soft_cells_empty_is_an_error(seg_set):
    for row in (1, 2, 3):
        _set_cell(seg_set.csv, row, "soft_mask", "")
    with pytest.raises(DataError, match="every soft_mask cell is empty"):
        _dataset(seg_set)


def test_soft_weight_column_reaches_the_batch_as_a_weight_map(seg_set):
    weights = []
    for i in range(len(seg_set.image_paths)):
        w = np.full((1, *seg_set.masks[i].shape), 0.25 * (i + 1), np.float32)
        weights.append(write_tif(seg_set.root / "weights" / f"w_{i}.tif", w).name)
    _add_columns(seg_set.csv, {"soft_weight": [f"weights/{n}" for n in weights]})
    ds = _dataset(seg_set, extra_targets={"soft_weight": "soft_weight"})
    item = ds[len(ds) - 1]  # a tile of row 3: weight 0.75 (0 in the padding)
    assert item["targets"]["soft_weight"].shape == (1, 16, 16)
    assert float(item["targets"]["soft_weight"].max()) == pytest.approx(0.75)
