"""Data checks: every bad input gives a DataError naming the row, the file and the problem."""

from __future__ import annotations

import numpy as np
import pytest
from rich.console import Console

from polyhead.config import check_data_from_config
from polyhead.data import RandomCropSegmentationDataset, check_data, raster_io
from polyhead.errors import ConfigError, DataError

from .conftest import HEIGHT, N_CLASSES, WIDTH, write_csv, write_tif

CROP = 16


def _missing_image(d):
    d.image_paths[1].unlink()
    return d.image_paths[1].name


def _unreadable_mask(d):
    d.mask_paths[1].write_bytes(b"this is not a tiff")
    return d.mask_paths[1].name


def _mask_size(d):
    write_tif(d.mask_paths[1], np.zeros((HEIGHT, WIDTH - 8), np.uint8))
    return d.mask_paths[1].name


def _soft_size(d):
    write_tif(d.soft_paths[1], np.full((N_CLASSES, HEIGHT - 1, WIDTH), 0.25, np.float32))
    return d.soft_paths[1].name


def _mask_two_bands(d):
    write_tif(d.mask_paths[1], np.zeros((2, HEIGHT, WIDTH), np.uint8))
    return d.mask_paths[1].name


def _soft_bands(d):
    write_tif(d.soft_paths[1], np.full((N_CLASSES - 1, HEIGHT, WIDTH), 1 / 3, np.float32))
    return d.soft_paths[1].name


def _soft_sum(d):
    mask, soft = d.masks[1].copy(), d.softs[1].copy()
    mask[5, 7] = 0
    soft[:, 5, 7] = [1.0, 0.5, 0.0, 0.0]
    write_tif(d.mask_paths[1], mask)
    write_tif(d.soft_paths[1], soft)
    return d.soft_paths[1].name


def _class_id(d):
    mask = d.masks[1].copy()
    mask[3, 4] = 7
    write_tif(d.mask_paths[1], mask)
    return d.mask_paths[1].name


def _empty_cell(d):
    lines = d.csv.read_text().splitlines()
    lines[2] = "images/img_1.tif,,soft/soft_1.tif"
    d.csv.write_text("\n".join(lines) + "\n")
    return "mask"


BAD_ROWS = [
    ("missing_file", _missing_image, {}, ["not found"]),
    ("unreadable", _unreadable_mask, {}, ["unreadable"]),
    ("mask_size", _mask_size, {}, ["48 x 32", "differs"]),
    ("soft_size", _soft_size, {}, ["47 x 40", "differs"]),
    ("mask_bands", _mask_two_bands, {}, ["2 bands"]),
    ("soft_bands", _soft_bands, {}, ["3 bands", "n_classes=4"]),
    ("soft_sum", _soft_sum, {}, ["sum to 1", "0.5", "pixel row 5, col 7"]),
    ("class_id", _class_id, {}, ["class id(s) 7", "pixel row 3, col 4"]),
    ("empty_cell", _empty_cell, {}, ["empty"]),
    ("crop_random", lambda d: "img_1.tif", {"crop_size": WIDTH + 1}, ["crop_size 41"]),
    (
        "crop_grid",
        lambda d: "img_1.tif",
        {"crop_size": HEIGHT + 1, "grid_mode": True, "samples_per_epoch": None},
        ["crop_size 49"],
    ),
]


@pytest.mark.parametrize(
    ("mutate", "kwargs", "expected"),
    [case[1:] for case in BAD_ROWS],
    ids=[case[0] for case in BAD_ROWS],
)
def test_bad_row_raises_data_error(seg_set, mutate, kwargs, expected):
    culprit = mutate(seg_set)
    options = {"crop_size": CROP, "n_classes": N_CLASSES, "samples_per_epoch": 4}
    options.update(soft_labels=True, **kwargs)
    with pytest.raises(DataError) as info:
        RandomCropSegmentationDataset(seg_set.csv, **options)
    message = str(info.value)
    assert str(seg_set.csv) in message
    row_lines = [line for line in message.splitlines() if "row 2" in line]
    assert row_lines, message
    assert culprit in row_lines[0]
    for text in expected:
        assert text in row_lines[0], message
    assert "row 1 " not in message or kwargs.get("crop_size", 0) > CROP  # only row 2 is bad


@pytest.mark.parametrize(
    ("header", "rows", "kwargs", "expected"),
    [
        (None, None, {}, "not found"),
        (("image",), [["a.tif"]], {}, "missing column(s) mask"),
        (("image", "mask"), [], {}, "no data rows"),
        (("image", "mask"), [["a.tif", "b.tif"]], {"soft_labels": True}, "soft_mask"),
    ],
    ids=["missing_csv", "missing_column", "empty_csv", "soft_column"],
)
def test_bad_csv_raises_data_error(tmp_path, header, rows, kwargs, expected):
    csv_path = tmp_path / "list.csv"
    if header is not None:
        write_csv(csv_path, rows, header)
    with pytest.raises(DataError, match="list.csv") as info:
        RandomCropSegmentationDataset(
            csv_path, crop_size=CROP, n_classes=N_CLASSES, samples_per_epoch=2, **kwargs
        )
    assert expected in str(info.value)


def test_all_problems_reported_at_once_up_to_twenty(seg_set, tmp_path):
    _class_id(seg_set)
    _soft_bands(seg_set)
    seg_set.image_paths[2].unlink()
    with pytest.raises(DataError) as info:
        check_data(seg_set.csv, N_CLASSES)
    lines = str(info.value).splitlines()[1:]
    assert len(lines) == 3
    assert "row 2" in lines[0] and "soft_1.tif" in lines[0]
    assert "row 2" in lines[1] and "mask_1.tif" in lines[1]
    assert "row 3" in lines[2] and "img_2.tif" in lines[2]

    many = write_csv(
        tmp_path / "many.csv", [[f"x{i}.tif", "m.tif"] for i in range(30)], ("image", "mask")
    )
    with pytest.raises(DataError) as info:
        check_data(many, N_CLASSES)
    assert len(str(info.value).splitlines()) == 21
    assert "first 20" in str(info.value)


def test_ignored_pixels_may_have_zero_soft_mask(seg_set):
    assert any((m == 255).any() for m in seg_set.masks)
    summary = check_data(seg_set.csv, N_CLASSES, crop_size=CROP, soft_labels=True)
    assert summary.soft_labels


def test_uint8_soft_tolerance(seg_factory):
    data = seg_factory(soft="uint8", n_images=1)
    check_data(data.csv, N_CLASSES)  # rounding to 1/255 is tolerated
    soft = raster_io.read_window(data.soft_paths[0], 0, 0, HEIGHT, WIDTH)
    mask = data.masks[0].copy()
    mask[0, 0] = 1
    soft[:, 0, 0] = [0, 250, 8, 0]  # sum 258/255: off by 3/255 > 1e-3 + 4/510
    write_tif(data.mask_paths[0], mask)
    write_tif(data.soft_paths[0], soft)
    with pytest.raises(DataError, match=r"sum to 1 at 1 pixel"):
        check_data(data.csv, N_CLASSES)


def test_check_data_histogram_matches_bincount(seg_set):
    summary = check_data(seg_set.csv, N_CLASSES, crop_size=CROP)
    assert summary.soft_labels  # the CSV has a soft_mask column and soft_labels=None
    all_masks = np.concatenate([m.ravel() for m in seg_set.masks])
    expected = np.bincount(all_masks[all_masks != 255], minlength=N_CLASSES)
    assert summary.class_counts == expected.tolist()
    assert summary.ignored_pixels == int((all_masks == 255).sum())
    assert summary.n_images == 3
    assert summary.total_pixels == 3 * HEIGHT * WIDTH
    assert [(im.height, im.width, im.bands, im.dtype) for im in summary.images] == [
        (HEIGHT, WIDTH, 4, "uint16")
    ] * 3
    console = Console(record=True, width=200)
    console.print(summary.to_table())
    text = console.export_text()
    assert f"{expected[0]:,}" in text and "ignored (255)" in text and "%" in text


def test_check_data_soft_labels_switch(seg_set):
    _soft_sum(seg_set)
    with pytest.raises(DataError):
        check_data(seg_set.csv, N_CLASSES)
    assert not check_data(seg_set.csv, N_CLASSES, soft_labels=False).soft_labels


def test_validation_reads_masks_in_strips(seg_set, read_log, monkeypatch):
    monkeypatch.setattr(raster_io, "BLOCK_PIXELS", WIDTH * 8)
    summary = check_data(seg_set.csv, N_CLASSES)
    mask_reads = [h for name, h, _ in read_log if "mask_" in name or "soft_" in name]
    assert max(mask_reads) == 8 and len(mask_reads) >= 2 * 3 * (HEIGHT // 8)
    all_masks = np.concatenate([m.ravel() for m in seg_set.masks])
    assert sum(summary.class_counts) == int((all_masks != 255).sum())


def test_check_data_from_config(seg_set, tmp_path):
    yaml_path = seg_set.root / "train.yaml"
    yaml_path.write_text(
        "model:\n  n_classes: 4\n"
        "data:\n"
        "  train:\n    input_csv_path: data.csv\n    crop_size: 16\n    soft_labels: true\n"
        "  val:\n    input_csv_path: ${data.train.input_csv_path}\n    grid_mode: true\n"
        "n_classes: 4\n"
    )
    summaries = check_data_from_config(yaml_path)
    assert len(summaries) == 2
    assert all(s.n_images == 3 for s in summaries)
    assert summaries[0].soft_labels

    cfg = {"datasets": [{"input_csv_path": str(seg_set.csv), "crop_size": 64}], "n_classes": 4}
    with pytest.raises(DataError, match="crop_size 64"):
        check_data_from_config(cfg)
    with pytest.raises(ConfigError, match="n_classes"):
        check_data_from_config({"data": {"input_csv_path": str(seg_set.csv)}})
