import pytest
import torch
from PIL import Image

from polyhead.classification.digits import DIGIT_CLASS, TASK_HEADS
from polyhead.data.classification import ClassificationCSVDataset, load_image
from polyhead.errors import ConfigError, DataError


def _write(tmp_path, lines, name="data.csv"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def images(tmp_path):
    for i, color in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        Image.new("RGB", (20, 10), color).save(tmp_path / f"im{i}.png")
    return tmp_path


def test_digits_class_id_csv_maps_to_two_task_heads(digits):
    ds = ClassificationCSVDataset(digits.train_csv, TASK_HEADS, image_size=32, classes=3)
    assert len(ds) == digits.counts["train"] and ds.head_names == ["screen", "other"]
    rows = [line.split(",") for line in digits.train_csv.read_text().splitlines()[1:]]
    labels = torch.tensor([int(r[1]) for r in rows])
    assert all(DIGIT_CLASS[int(r[2])] == int(r[1]) for r in rows)
    assert torch.equal(ds.labels("screen"), (labels == 2).long())
    assert torch.equal(ds.labels("other"), (labels == 1).long())
    item = ds[0]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert set(item["targets"]) == {"screen", "other"}
    batch = next(iter(ds.make_loader()))
    assert batch["targets"]["screen"].shape == (1,)


def test_headerless_article_csv_map_rule_and_per_head_columns(images):
    csv = _write(images, ["im0.png,0", "im1.png,1", "im2.png,2"])  # the article's layout
    ds = ClassificationCSVDataset(
        csv,
        {"kind": {"from": "label", "map": {0: 0, 1: 1, 2: None}}, "all": {"from": "label"}},
        image_size=[8, 16],
        classes=3,
    )
    assert ds.labels("kind").tolist() == [0, 1, -1] and ds.labels("all").tolist() == [0, 1, 2]
    assert ds[2]["image"].shape == (3, 8, 16)
    cols = _write(images, ["path,screen,other", "im0.png,1,", "im1.png,,0", "im2.png,0,1"])
    ds = ClassificationCSVDataset(
        cols, {"screen": {"column": "screen"}, "other": "other"}, image_size=8
    )
    assert ds.labels("screen").tolist() == [1, -1, 0]  # empty cell = missing
    assert ds.labels("other").tolist() == [-1, 0, 1]
    assert ds.ignore_index == -1


def test_exif_orientation_is_applied_and_rgb(tmp_path):
    im = Image.new("L", (40, 20), 0)
    im.paste(255, (0, 0, 20, 20))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    im.save(tmp_path / "r.jpg", exif=exif.tobytes())
    out = load_image(tmp_path / "r.jpg", (40, 20))  # portrait after rotation: H 40, W 20
    assert out.mode == "RGB" and out.size == (20, 40)
    top, bottom = out.getpixel((10, 5)), out.getpixel((10, 35))
    assert top[0] > 200 and bottom[0] < 50  # the white half is now on top


def test_bad_rows_are_named_before_training(images):
    (images / "broken.png").write_bytes(b"not an image")
    csv = _write(
        images,
        [
            "path,label",
            "im0.png,0",
            "missing.png,1",
            "im1.png,7",
            "im2.png,x",
            "broken.png,2",
            ",1",
        ],
    )
    with pytest.raises(DataError) as err:
        ClassificationCSVDataset(csv, TASK_HEADS, image_size=8, classes=3)
    msg = str(err.value)
    assert "6 bad row(s)" not in msg and "5 bad row(s)" in msg
    assert "row 2" in msg and "missing.png" in msg and "file not found" in msg
    assert "row 3" in msg and "unknown label 7" in msg
    assert "row 4" in msg and "not an integer" in msg
    assert "row 5" in msg and "broken.png" in msg and "unreadable image" in msg
    assert "row 6" in msg and "empty path" in msg
    assert "row 1 " not in msg


def test_config_errors(images):
    csv = _write(images, ["im0.png,0"])
    with pytest.raises(ConfigError, match="either 'from'"):
        ClassificationCSVDataset(csv, {"a": {"positive": [1]}})
    with pytest.raises(ConfigError, match="classes"):
        ClassificationCSVDataset(csv, {"a": {"from": "label"}})
    with pytest.raises(DataError, match="no column"):
        ClassificationCSVDataset(csv, {"a": {"column": "screen"}})
