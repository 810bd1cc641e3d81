"""Inputs checked before work starts: each error names the CSV row, the file and the fault.

Data checks decode every pixel; NaN/inf pixels are refused (or ignored on request); the
parts of a training run agree on bands and classes before it starts; predict checks every
input before the first tile, honours nodata and never lets two inputs write one output;
CSVs with a UTF-8 BOM are read everywhere.
"""

from __future__ import annotations

import csv
import inspect
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from torch import nn

from polyhead.cli import main
from polyhead.data import RandomCropSegmentationDataset, check_data, raster_io
from polyhead.errors import ConfigError, DataError

SIZE, BANDS, CLASSES = 48, 4, 4
TRANSFORM = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 5_000_000.0)


def tif(path: Path, array: np.ndarray, **profile) -> Path:
    """Write ``array`` ``[bands, H, W]`` (or ``[H, W]``) as a georeferenced GeoTIFF."""
    array = array[None] if array.ndim == 2 else array
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(
        driver="GTiff",
        height=array.shape[1],
        width=array.shape[2],
        count=array.shape[0],
        dtype=str(array.dtype),
        crs="EPSG:32633",
        transform=TRANSFORM,
        **profile,
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array)
    return path


def write_csv(path: Path, header: list[str], rows: list[list[str]], bom: bool = False) -> Path:
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def image(seed: int = 0, bands: int = BANDS, dtype: str = "float32") -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((bands, SIZE, SIZE)) * 1000).astype(dtype)


def seg_csv(root: Path, images: list[np.ndarray], **tif_options) -> Path:
    """image,mask CSV of the given images with random 4-class masks."""
    rows = []
    for i, array in enumerate(images):
        mask = np.random.default_rng(i).integers(0, CLASSES, (SIZE, SIZE), dtype=np.uint8)
        tif(root / f"img_{i}.tif", array, **tif_options)
        tif(root / f"mask_{i}.tif", mask)
        rows.append([f"img_{i}.tif", f"mask_{i}.tif"])
    return write_csv(root / "data.csv", ["image", "mask"], rows)


def problem_line(text: str, *needles: str) -> str:
    """The one line of ``text`` holding every needle (fails when none does)."""
    lines = [line for line in text.splitlines() if all(n in line for n in needles)]
    assert lines, f"no line with {needles} in:\n{text}"
    return lines[0]


def with_nan(array: np.ndarray, n: int = 5) -> np.ndarray:
    array = array.copy()
    array[1, 3, 7 : 7 + n - 1] = np.nan
    array[0, 10, 2] = np.inf
    return array


# --- data: every pixel decoded, NaN/inf refused or ignored -----------------------------------


def test_check_data_refuses_nan_and_inf_naming_row_file_and_count(tmp_path, capsys):
    csv_path = seg_csv(tmp_path, [image(0), with_nan(image(1))])
    with pytest.raises(DataError) as info:
        check_data(csv_path, CLASSES)
    line = problem_line(str(info.value), "row 2", "img_1.tif", "5 pixel(s)", "NaN")
    assert "pixel row 3, col 7" in line and "nonfinite: nodata" in line
    assert "row 1 " not in str(info.value)

    assert main(["check-data", str(csv_path), "--n-classes", str(CLASSES)]) == 2
    err = capsys.readouterr().err
    problem_line(err, "row 2", "img_1.tif", "NaN")
    assert "Traceback" not in err


def test_nonfinite_nodata_ignores_those_pixels(tmp_path):
    csv_path = seg_csv(tmp_path, [with_nan(image(1))])
    summary = check_data(csv_path, CLASSES, nonfinite="nodata")
    assert summary.nonfinite_pixels == 5
    ds = RandomCropSegmentationDataset(
        csv_path, crop_size=SIZE, n_classes=CLASSES, grid_mode=True, nonfinite="nodata"
    )
    item = ds[0]
    assert torch.isfinite(item["image"]).all()
    hard = item["targets"]["hard"]
    assert hard[3, 7] == 255 and hard[10, 2] == 255 and int((hard == 255).sum()) == 5
    with pytest.raises(ConfigError, match="nonfinite"):
        RandomCropSegmentationDataset(
            csv_path, crop_size=SIZE, n_classes=CLASSES, grid_mode=True, nonfinite="zero"
        )


def test_unvalidated_dataset_refuses_a_nan_crop_naming_the_row(tmp_path):
    csv_path = seg_csv(tmp_path, [image(0), with_nan(image(1))])
    ds = RandomCropSegmentationDataset(
        csv_path, crop_size=SIZE, n_classes=CLASSES, grid_mode=True, validate=False
    )
    assert torch.isfinite(ds[0]["image"]).all()
    with pytest.raises(DataError, match=r"row 2 .*img_1\.tif.*5 NaN/inf pixel"):
        ds[1]


def truncated_tif(path: Path) -> Path:
    """A striped GeoTIFF whose last third is cut off: its header and first rows read fine."""
    rng = np.random.default_rng(3)
    tif(path, rng.integers(0, 4000, (BANDS, SIZE, SIZE)).astype("uint16"), blockysize=8)
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(size * 2 // 3)
    assert raster_io.read_window(path, 0, 0, 1, 1).shape == (BANDS, 1, 1)
    return path


def test_check_data_decodes_every_pixel_of_an_image(tmp_path, capsys):
    csv_path = seg_csv(tmp_path, [image(0), image(1)])
    truncated_tif(tmp_path / "img_1.tif")
    with pytest.raises(DataError) as info:
        check_data(csv_path, CLASSES)
    problem_line(str(info.value), "row 2", "img_1.tif", "unreadable", "IReadBlock")

    assert main(["check-data", str(csv_path), "--n-classes", str(CLASSES)]) == 2
    err = capsys.readouterr().err
    problem_line(err, "row 2", "img_1.tif", "unreadable")
    assert "Traceback" not in err


def test_image_scan_reads_bounded_strips(tmp_path, monkeypatch):
    csv_path = seg_csv(tmp_path, [image(0)])
    reads: list[tuple[str, int]] = []
    real_open = raster_io._open_rasterio

    class Spy:
        def __init__(self, src):
            self.src = src

        def read(self, *args, **kwargs):
            reads.append((Path(self.src.name).name, int(kwargs["window"].height)))
            return self.src.read(*args, **kwargs)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.src.close()

        def __getattr__(self, name):
            return getattr(self.src, name)

    monkeypatch.setattr(raster_io, "_open_rasterio", lambda p: Spy(real_open(p)))
    monkeypatch.setattr(raster_io, "BLOCK_PIXELS", SIZE * 8)
    check_data(csv_path, CLASSES)
    heights = [h for name, h in reads if name == "img_0.tif"]
    assert max(heights) == 8 and sum(heights) == SIZE  # every row once, 8 rows at a time


def test_check_data_wants_one_band_count(tmp_path):
    csv_path = seg_csv(tmp_path, [image(0), image(1, bands=3)])
    with pytest.raises(DataError) as info:
        check_data(csv_path, CLASSES)
    problem_line(str(info.value), "row 2", "img_1.tif", "3 band(s)", "row 1's image has 4")


# --- preflight: the parts of a run agree before it starts -------------------------------------


def dual_head(in_channels: int = BANDS, classes: int = CLASSES) -> nn.Module:
    from polyhead.models import UPerNetDualHead

    return UPerNetDualHead(
        encoder_name="resnet18",
        encoder_weights=None,
        decoder_channels=16,
        in_channels=in_channels,
        classes=classes,
    )


def dataset(csv_path: Path, **kwargs) -> RandomCropSegmentationDataset:
    return RandomCropSegmentationDataset(
        csv_path, crop_size=32, n_classes=CLASSES, samples_per_epoch=2, **kwargs
    )


def test_preflight_refuses_images_with_other_bands_than_the_model(tmp_path):
    from polyhead.preflight import check_run

    data = dataset(seg_csv(tmp_path, [image(0, bands=1), image(1, bands=1)]))
    with pytest.raises(DataError) as info:
        check_run(dual_head(in_channels=4), {"train_dataset": data})
    line = str(info.value)
    assert "\n" not in line
    for text in ("data.csv", "row 1", "img_0.tif", "1 band(s)", "reads 4", "model.in_channels"):
        assert text in line, line
    unvalidated = dataset(tmp_path / "data.csv", validate=False)
    with pytest.raises(DataError, match=r"row 1 .*img_0\.tif.* 1 band"):
        check_run(dual_head(in_channels=4), {"val_dataset": unvalidated})
    check_run(dual_head(in_channels=1), {"train_dataset": data})


@pytest.mark.parametrize("model_classes", [3, 6])
def test_preflight_wants_one_class_count(tmp_path, model_classes):
    from polyhead.preflight import check_run

    data = dataset(seg_csv(tmp_path, [image(0)]))
    with pytest.raises(ConfigError) as info:
        check_run(dual_head(classes=model_classes), {"train_dataset": data, "val_dataset": data})
    message = str(info.value)
    assert f"model head A: {model_classes} (model.classes" in message
    assert "train_dataset: 4 (train_dataset.n_classes)" in message
    assert "val_dataset: 4" in message and "num_classes" in message


def test_preflight_checks_loss_weights_and_metrics(tmp_path):
    from polyhead.losses import CrossEntropyLoss, MultiHeadLoss
    from polyhead.metrics import SegmentationMetrics
    from polyhead.preflight import check_run

    data = dataset(seg_csv(tmp_path, [image(0)]))
    model = dual_head()
    losses = MultiHeadLoss(dict(model.heads.items()), hard_loss=CrossEntropyLoss([1.0] * 5))
    with pytest.raises(ConfigError, match=r"loss losses\.A weight: 5 \(the loss's weight list\)"):
        check_run(model, {"train_dataset": data}, losses=losses)
    with pytest.raises(ConfigError, match=r"metrics: 3 \(task.num_classes\)"):
        check_run(model, {"train_dataset": data}, metrics=SegmentationMetrics(3))
    good = MultiHeadLoss(dict(model.heads.items()), hard_loss=CrossEntropyLoss([1.0] * 4))
    check_run(model, {"train_dataset": data}, num_classes=4, losses=good)


def test_preflight_on_a_built_task(tmp_path):
    from polyhead.data import DataModule
    from polyhead.preflight import check_task
    from polyhead.tasks import SegmentationTask

    data = dataset(seg_csv(tmp_path, [image(0)]))
    task = SegmentationTask(dual_head(classes=3))
    with pytest.raises(ConfigError, match=r"model head B: 3 .*train_dataset: 4"):
        check_task(task, DataModule(train_dataset=data))
    check_task(SegmentationTask(dual_head()), DataModule(train_dataset=data))


def test_train_runs_preflight_before_any_run_folder(synthetic, tmp_path):
    import polyhead.train
    from polyhead.demo.run import demo_config

    if "preflight" not in inspect.getsource(polyhead.train):
        pytest.skip("polyhead.train does not call polyhead.preflight yet")
    cfg = demo_config(synthetic, tmp_path, 1, "resnet18", crop_size=32, samples_per_epoch=4)
    cfg["model"]["classes"] = 3
    with pytest.raises(ConfigError, match=r"model head A: 3 .*train_dataset: 4"):
        polyhead.train.train(cfg)
    cfg["model"]["classes"], cfg["model"]["in_channels"] = 4, 1
    with pytest.raises(DataError, match=r"row 1 .* 4 band\(s\), but the model reads 1"):
        polyhead.train.train(cfg)
    assert not Path(cfg["output_dir"]).exists()


# --- predict: inputs checked first, nodata honoured, one output per input ---------------------


@pytest.fixture
def conv_ckpt(tmp_path) -> Path:
    """A checkpoint of a 1x1 conv: 4 bands -> 3 classes."""
    torch.manual_seed(0)
    conv = nn.Conv2d(BANDS, 3, 1)
    path = tmp_path / "conv.ckpt"
    model = {"_target_": "torch.nn.Conv2d", "in_channels": BANDS, "out_channels": 3}
    model["kernel_size"] = 1
    state = {f"model.{k}": v for k, v in conv.state_dict().items()}
    torch.save({"polyhead_config": {"model": model}, "state_dict": state}, path)
    return path


def predict(ckpt: Path, *inputs: Path | str, out: Path) -> int:
    argv = ["predict", str(ckpt), *map(str, inputs), "-o", str(out), "--tile-size", "32"]
    return main([*argv, "--overlap", "8", "--probabilities", "--uncertainty"])


def test_predict_checks_every_input_band_count_before_the_first_tile(tmp_path, conv_ckpt, capsys):
    good = tif(tmp_path / "in" / "good.tif", image(0))
    bad = tif(tmp_path / "in" / "rgb.tif", image(1, bands=3))
    out = tmp_path / "out"
    assert predict(conv_ckpt, good, bad, out=out) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert "rgb.tif" in err and "3 band(s)" in err and "reads 4" in err
    assert not out.exists()  # not even the first (good) input was predicted


def test_predict_refuses_inputs_that_would_share_outputs(tmp_path, conv_ckpt, capsys):
    a = tif(tmp_path / "a" / "x.tif", image(0))
    b = tif(tmp_path / "b" / "x.tif", image(1))
    out = tmp_path / "out"
    assert predict(conv_ckpt, a, b, out=out) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(a) in err and str(b) in err and "same name" in err
    assert not out.exists()
    assert predict(conv_ckpt, a, a, out=out) == 0  # the same file twice is predicted once
    assert sorted(p.name for p in out.iterdir())[0] == "x_classes.tif"


def test_predict_accepts_a_csv_with_a_bom(tmp_path, conv_ckpt):
    tif(tmp_path / "images" / "x.tif", image(0))
    listing = write_csv(tmp_path / "list.csv", ["image"], [["images/x.tif"]], bom=True)
    out = tmp_path / "out"
    assert predict(conv_ckpt, listing, out=out) == 0
    assert (out / "x_classes.tif").is_file()


def nodata_outputs(
    tmp_path: Path, array: np.ndarray, crf: bool = False, **profile
) -> dict[str, np.ndarray]:
    from polyhead.inference.predict import predict_files

    path = tif(tmp_path / "in" / "scene.tif", array, **profile)
    conv = nn.Conv2d(BANDS, 3, 1)
    out = tmp_path / "out"
    predict_files(
        conv,
        [path],
        out,
        tile_size=32,
        overlap=8,
        progress=False,
        write_probabilities=True,
        write_uncertainty=True,
        crf=crf,
    )
    found = {}
    for key in ("classes", "proba", "uncertainty"):
        with rasterio.open(out / f"scene_{key}.tif") as src:
            found[key], found[f"{key}_nodata"] = src.read(), src.nodata
    return found


def assert_nodata_at(found: dict[str, np.ndarray], hole: np.ndarray) -> None:
    assert found["classes_nodata"] == 255 and np.isnan(found["proba_nodata"])
    assert np.isnan(found["uncertainty_nodata"])
    assert (found["classes"][0][hole] == 255).all() and (found["classes"][0][~hole] < 3).all()
    for key in ("proba", "uncertainty"):
        assert np.isnan(found[key][:, hole]).all() and np.isfinite(found[key][:, ~hole]).all()


@pytest.mark.parametrize("crf", [False, True])
def test_predict_writes_the_inputs_nodata_as_nodata(tmp_path, crf):
    array = image(0, dtype="uint16") + 1
    array[:, 5:20, 10:40] = 0
    hole = np.zeros((SIZE, SIZE), bool)
    hole[5:20, 10:40] = True
    assert_nodata_at(nodata_outputs(tmp_path, array, crf=crf, nodata=0), hole)


def test_predict_treats_nan_pixels_as_nodata_without_spreading_them(tmp_path):
    array = image(0)
    array[2, 30:34, 0:48] = np.nan
    hole = np.zeros((SIZE, SIZE), bool)
    hole[30:34, :] = True
    assert_nodata_at(nodata_outputs(tmp_path, array), hole)


# --- CSVs with a UTF-8 BOM are read everywhere -------------------------------------------------


def _predict_listing(tmp_path: Path) -> None:
    from polyhead.inference.predict import expand_inputs

    img = tif(tmp_path / "x.tif", image(0))
    listing = write_csv(tmp_path / "images.csv", ["image"], [["x.tif"]], bom=True)
    assert expand_inputs([listing]) == [img.resolve()]


def _aggregation_masks(tmp_path: Path) -> None:
    from polyhead.aggregation.inputs import detect_kind

    masks = write_csv(tmp_path / "m.csv", ["image", "annotator", "mask"], [], bom=True)
    assert detect_kind(masks) == "masks"


def _teacher_targets(tmp_path: Path) -> None:
    from polyhead.distill.predict import teacher_uncertainty_paths

    unc = tif(tmp_path / "x_unc.tif", np.zeros((3, SIZE, SIZE), np.float32))
    rows = [["x.tif", "x_unc.tif"]]
    distill = write_csv(tmp_path / "distill.csv", ["image", "uncertainty"], rows, bom=True)
    assert teacher_uncertainty_paths(distill) == {"x": unc}


@pytest.mark.parametrize("reader", [_predict_listing, _aggregation_masks, _teacher_targets])
def test_bom_csvs_are_read_by_every_reader(tmp_path, reader):
    reader(tmp_path)
    seg = seg_csv(tmp_path / "seg", [image(0)])  # as training always did
    seg.write_text("\ufeff" + seg.read_text())
    assert check_data(seg, CLASSES).n_images == 1
