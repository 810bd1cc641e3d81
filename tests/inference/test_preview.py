"""write_preview: a decimated colour rendering of a class map, with legend and image."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from polyhead.classes import ClassTable
from polyhead.errors import DataError
from polyhead.inference.preview import (
    preview_shape,
    read_class_overview,
    render_classes,
    write_preview,
)


def _tif(path: Path, data: np.ndarray, nodata: float | None = None) -> Path:
    data = data[None] if data.ndim == 2 else data
    profile = {
        "driver": "GTiff",
        "height": data.shape[1],
        "width": data.shape[2],
        "count": data.shape[0],
        "dtype": data.dtype,
        "crs": "EPSG:32633",
        "transform": from_origin(500000, 0, 10, 10),
        "nodata": nodata,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


@pytest.fixture()
def class_map(tmp_path: Path) -> Path:
    labels = np.zeros((300, 200), np.uint8)  # three horizontal bands of classes 0, 1, 2
    labels[100:200] = 1
    labels[200:] = 2
    labels[:10, :10] = 255  # nodata corner
    return _tif(tmp_path / "scene_classes.tif", labels, nodata=255)


TABLE = ClassTable.from_config(
    [
        {"name": "background", "color": [200, 180, 140]},
        {"name": "water", "color": [43, 108, 196]},
        {"name": "forest", "color": [46, 139, 58]},
    ],
    3,
)


def test_preview_shape_shrinks_longer_side_only() -> None:
    assert preview_shape(300, 200, 64) == (64, 43)
    assert preview_shape(300, 200, 1024) == (300, 200)
    with pytest.raises(DataError, match="max_size"):
        preview_shape(10, 10, 0)


def test_overview_is_decimated_nearest_with_nodata_masked(class_map: Path) -> None:
    labels = read_class_overview(class_map, 30)
    assert labels.shape == (30, 20)
    assert set(np.unique(labels.compressed())) == {0, 1, 2}  # nearest: no mixed ids
    assert labels.mask[0, 0] and not labels.mask[-1, -1]
    assert list(labels[[5, 15, 25], 10]) == [0, 1, 2]


def test_render_classes_uses_the_table_and_names_a_bad_id(class_map: Path) -> None:
    labels = read_class_overview(class_map, 30)
    rgb = render_classes(labels, TABLE, "x.tif")
    assert np.allclose(rgb[15, 10], np.array([43, 108, 196]) / 255)
    assert np.allclose(rgb[0, 0], 1.0)  # nodata: white
    with pytest.raises(DataError, match=r"x\.tif: holds class id 2 but classes names 2"):
        render_classes(labels, ClassTable.default(2), "x.tif")


def _colour_pixels(png: np.ndarray, rgb: tuple[int, int, int]) -> int:
    pixels = np.round(png[..., :3] * 255).astype(int)
    return int(np.all(pixels == np.array(rgb), axis=-1).sum())


def test_write_preview_class_colours_and_image(class_map: Path, tmp_path: Path) -> None:
    image = np.stack([np.full((300, 200), v, np.uint16) for v in (100, 200, 300, 400)])
    image[:, :, 100:] *= 3
    image_path = _tif(tmp_path / "scene.tif", image)
    out = write_preview(
        class_map,
        tmp_path / "scene_preview.png",
        classes=TABLE,
        image_path=image_path,
        max_size=60,
    )
    png = mpimg.imread(out)
    assert png.shape[1] > 2 * 40  # image and class map side by side, plus the legend
    for color in TABLE.colors:
        assert _colour_pixels(png, color) > 200  # each class band drawn in its colour
    only = write_preview(class_map, tmp_path / "only.png", classes=["a", "b", "c"], max_size=60)
    assert mpimg.imread(only).shape[1] < png.shape[1]


def test_write_preview_refuses_before_writing(class_map: Path, tmp_path: Path) -> None:
    out = tmp_path / "bad.png"
    with pytest.raises(DataError, match="holds class id 2"):
        write_preview(class_map, out, classes=ClassTable.default(2), max_size=60)
    small = _tif(tmp_path / "small.tif", np.zeros((3, 50, 50), np.uint16))
    with pytest.raises(DataError, match="image is 50x50 px but the class map is 300x200"):
        write_preview(class_map, out, image_path=small, max_size=60)
    assert list(tmp_path.glob("bad*")) == [] and not list(tmp_path.glob(".bad*"))
