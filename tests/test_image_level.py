"""Image-level heads at inference: the CSV of `predict_image_level` and ONNX export."""

import csv

import numpy as np
import pytest
import rasterio
import torch

from polyhead.errors import ConfigError, DataError
from polyhead.inference.export import compare_segmentation_onnx, export_segmentation_onnx
from polyhead.inference.image_level import predict_image_level, tile_origins
from polyhead.models import MultiHeadSegmentationModel


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    heads = {
        "A": "fpn",
        "land": {"role": "classification", "classes": 3},
        "height": {"role": "regression"},
        "cover": {"role": "regression", "classes": 2, "activation": "softmax"},
    }
    return MultiHeadSegmentationModel(heads, encoder_name="resnet18", in_channels=2, classes=2)


def _tif(path, array):
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=array.shape[1],
        width=array.shape[2],
        count=array.shape[0],
        dtype="float32",
    ) as dst:
        dst.write(array)
    return path


def test_tile_origins_cover_with_full_tiles():
    assert tile_origins(96, 64) == [0, 32]
    assert tile_origins(128, 64) == [0, 64]
    assert tile_origins(40, 64) == [0]


def test_csv_holds_the_mean_over_tiles(model, tmp_path):
    rng = np.random.default_rng(0)
    big = rng.random((2, 64, 96), dtype=np.float32)
    small = rng.random((2, 40, 40), dtype=np.float32)
    paths = [_tif(tmp_path / "big.tif", big), _tif(tmp_path / "small.tif", small)]
    out = predict_image_level(
        model,
        paths,
        tmp_path / "out" / "heads.csv",
        tile_size=64,
        normalize=lambda t: t * 2.0,
        progress=False,
    )
    rows = list(csv.DictReader(open(out)))
    assert list(rows[0]) == [
        "image",
        "land",
        "land_p0",
        "land_p1",
        "land_p2",
        "height",
        "cover_0",
        "cover_1",
    ]
    model.eval()
    with torch.no_grad():
        tiles = torch.from_numpy(np.stack([big[:, :, :64], big[:, :, 32:]]) * 2.0)
        raw = model.forward_heads(tiles, ["land", "height"])
        probs = torch.softmax(raw["land"], 1).mean(0)
        padded = torch.nn.functional.pad(
            torch.from_numpy(small[None] * 2.0), (0, 24, 0, 24), mode="reflect"
        )
        small_height = model.forward_heads(padded, ["height"])["height"][0, 0]
    got = [float(rows[0][f"land_p{k}"]) for k in range(3)]
    assert got == pytest.approx(probs.tolist(), rel=1e-4)
    assert int(rows[0]["land"]) == int(probs.argmax())
    assert float(rows[0]["height"]) == pytest.approx(float(raw["height"].mean()), rel=1e-4)
    assert float(rows[1]["height"]) == pytest.approx(float(small_height), rel=1e-4)
    assert float(rows[1]["cover_0"]) + float(rows[1]["cover_1"]) == pytest.approx(1.0)


def test_bad_inputs_fail_before_any_output(model, tmp_path):
    good = _tif(tmp_path / "a.tif", np.zeros((2, 32, 32), np.float32))
    three = _tif(tmp_path / "b.tif", np.zeros((3, 32, 32), np.float32))
    out = tmp_path / "heads.csv"
    with pytest.raises(DataError, match=r"b.tif: 3 band\(s\) read, the model takes 2"):
        predict_image_level(model, [good, three], out, progress=False)
    with pytest.raises(DataError, match="missing.tif: image not found"):
        predict_image_level(model, [good, tmp_path / "missing.tif"], out, progress=False)
    with pytest.raises(ConfigError, match=r"\['A'\] are not image-level heads"):
        predict_image_level(model, [good], out, heads=["A"], progress=False)
    assert not out.exists() and not list(tmp_path.glob(".*partial*"))


def test_onnx_export_has_one_vector_output_per_image_head(model, tmp_path):
    path = export_segmentation_onnx(model, tmp_path / "m.onnx", sample_size=64)
    import onnxruntime as ort

    outputs = {o.name: o.shape for o in ort.InferenceSession(str(path)).get_outputs()}
    assert outputs["land"] == ["batch", 3] and outputs["cover"] == ["batch", 2]
    assert outputs["A"] == ["batch", 2, "height", "width"]
    assert compare_segmentation_onnx(model, path) < 1e-4


def test_predict_files_writes_the_image_level_csv_beside_the_rasters(model, tmp_path):
    from polyhead.inference.predict import IMAGE_LEVEL_CSV, predict_files

    rng = np.random.default_rng(1)
    paths = [_tif(tmp_path / f"scene{i}.tif", rng.random((2, 64, 64), np.float32)) for i in (1, 2)]
    maps = predict_files(model, paths, tmp_path / "out", tile_size=64, overlap=16, progress=False)
    assert [m.name for m in maps] == ["scene1_classes.tif", "scene2_classes.tif"]
    with open(tmp_path / "out" / IMAGE_LEVEL_CSV, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["image"] for r in rows] == [str(p) for p in paths]
    direct = predict_image_level(
        model, paths, tmp_path / "direct.csv", tile_size=64, progress=False
    )
    with open(direct, newline="") as fh:
        assert rows == list(csv.DictReader(fh))


def test_tiles_stream_one_batch_at_a_time(model, tmp_path, monkeypatch):
    """A large image is never read whole: each batch runs before the next is read."""
    from polyhead.data import raster_io

    rng = np.random.default_rng(1)
    path = _tif(tmp_path / "wide.tif", rng.random((2, 64, 320), dtype=np.float32))  # 5 tiles
    reads, seen = [], []
    read, forward = raster_io.read_window, type(model).forward_heads

    def counting_read(*args, **kwargs):
        reads.append(args[1:3])
        return read(*args, **kwargs)

    def recording_forward(self, x, names):
        seen.append((len(reads), x.shape[0]))
        return forward(self, x, names)

    monkeypatch.setattr(raster_io, "read_window", counting_read)
    monkeypatch.setattr(type(model), "forward_heads", recording_forward)
    out = predict_image_level(
        model, [path], tmp_path / "h.csv", tile_size=64, batch_size=2, progress=False
    )
    assert seen == [(2, 2), (4, 2), (5, 1)]  # tiles read so far, batch size
    assert len(list(csv.DictReader(open(out)))) == 1


class _Rank:
    """Rank ``rank`` of 2 in one process: `exchange` returns the other rank's report, taken
    from ``reports`` (where this rank's is stored for the other)."""

    world_size, device = 2, None

    def __init__(self, rank, reports):
        self.rank, self.reports = rank, reports

    def exchange(self, report):
        self.reports[self.rank] = report
        return [self.reports.get(r, (False, {})) for r in range(2)]


def test_image_level_rows_are_shared_between_ranks(model, tmp_path):
    """Each rank runs its images (the largest to the least loaded rank); rank 0 writes
    every row, in input order, the rows one process writes."""
    from polyhead.inference.predict import _image_level_csv

    rng = np.random.default_rng(2)
    sizes = {"a": 64, "b": 128, "c": 64}
    paths = [
        _tif(tmp_path / f"{s}.tif", rng.random((2, n, 64), np.float32)) for s, n in sizes.items()
    ]
    ran = []
    forward = type(model).forward_heads

    def spying(self, x, names):
        ran.append(len(x))
        return forward(self, x, names)

    options = dict(normalize=None, tile_size=64, batch_size=4, device="cpu", progress=False)
    names = model.image_level_heads()
    reports: dict = {}
    out = tmp_path / "two.csv"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(model), "forward_heads", spying)
        _image_level_csv(model, paths, names, out, _Rank(1, reports), options)
        assert sum(ran) == 2 and not out.exists()  # rank 1: a and c (b alone on rank 0)
        _image_level_csv(model, paths, names, out, _Rank(0, reports), options)
        assert sum(ran) == 4
    one = predict_image_level(model, paths, tmp_path / "one.csv", tile_size=64, progress=False)
    assert out.read_text() == one.read_text()


def test_a_failed_rank_fails_the_others_without_a_csv(model, tmp_path):
    from polyhead.errors import PolyheadError
    from polyhead.inference.predict import _image_level_csv

    path = _tif(tmp_path / "a.tif", np.zeros((2, 64, 64), np.float32))
    options = dict(normalize=None, tile_size=64, batch_size=4, device="cpu", progress=False)
    out = tmp_path / "two.csv"
    with pytest.raises(PolyheadError, match="1 of 2 prediction processes failed"):
        _image_level_csv(model, [path], ["land"], out, _Rank(0, {1: (True, None)}), options)
    assert not out.exists()
