"""distill-targets files, and their round trip through the dataset with augmentation."""

from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import rasterio
import torch

from polyhead.data import RandomCropSegmentationDataset
from polyhead.distill.targets import teacher_maps, write_distillation_targets
from polyhead.distill.teacher import band_names
from polyhead.errors import DataError

from .conftest import conv_teacher


def _norm(x):
    return (np.asarray(x, np.float32) - 1000.0) / 1000.0


@pytest.fixture(scope="module")
def written(synthetic, tmp_path_factory):
    out = tmp_path_factory.mktemp("targets")
    teacher = conv_teacher()
    teacher.normalize = _norm
    result = write_distillation_targets(teacher, synthetic.train_csv, out, tile_size=32, overlap=8)
    return teacher, result, out


def test_files_bands_georeferencing_and_values(written, synthetic):
    teacher, result, out = written
    lines = result.csv_path.read_text().splitlines()
    assert lines[0] == "image,mask,soft_mask,uncertainty" and len(lines) == 4
    assert lines[1].split(",")[2] == "teacher/scene_000_probs.tif"
    scene = synthetic.out_dir / "scenes" / "scene_000.tif"
    with rasterio.open(scene) as src:
        image, crs, transform = src.read(), src.crs, src.transform
    probs, unc = teacher_maps(teacher, image, _norm, tile_size=32, overlap=8)
    with rasterio.open(result.probs_paths[0]) as src:
        assert src.dtypes[0] == "uint8" and src.count == 4
        assert src.crs == crs and src.transform == transform
        assert np.abs(src.read() / 255.0 - probs).max() <= 0.5 / 255 + 1e-6
    with rasterio.open(result.uncertainty_paths[0]) as src:
        assert src.dtypes[0] == "uint16" and list(src.descriptions) == band_names(4)
        stored = src.read().astype(np.float64) * np.asarray(src.scales)[:, None, None]
        assert src.crs == crs
    top = unc.reshape(unc.shape[0], -1).max(1)[:, None, None]
    assert np.all(np.abs(stored - unc) <= top / 65535 * 0.5 + 1e-7)
    assert unc[0].mean() > 1e-3  # the members really disagree


def _dataset(csv, augmentation=None, **kw):
    return RandomCropSegmentationDataset(
        csv,
        crop_size=32,
        n_classes=4,
        soft_labels=True,
        grid_mode=True,
        extra_targets={"uncertainty": "uncertainty"},
        augmentation_list=augmentation,
        **kw,
    )


def test_round_trip_through_the_dataset_with_flips_aligned(written):
    _, result, _ = written
    plain = _dataset(result.csv_path)
    item = plain[1]  # tile (row 0, col 32) of the first scene
    with rasterio.open(result.uncertainty_paths[0]) as src:
        expected = src.read(window=((0, 32), (32, 64))).astype(np.float32)
        expected *= np.asarray(src.scales, np.float32)[:, None, None]
    unc = item["targets"]["uncertainty"]
    assert unc.dtype == torch.float32 and unc.shape == (3 + 4, 32, 32)
    assert torch.allclose(unc, torch.from_numpy(expected), atol=1e-6)
    assert torch.allclose(item["targets"]["soft"].sum(0), torch.ones(32, 32), atol=4 / 255)

    flips = [A.HorizontalFlip(p=1.0), A.VerticalFlip(p=1.0)]
    flipped = _dataset(result.csv_path, flips)[1]
    for key in ("soft", "uncertainty"):
        assert torch.equal(flipped["targets"][key], item["targets"][key].flip(-1, -2))
    assert torch.equal(flipped["targets"]["hard"], item["targets"]["hard"].flip(-1, -2))
    assert torch.equal(flipped["image"], item["image"].flip(-1, -2))


def test_extra_target_validation_names_row_and_file(written, tmp_path):
    _, result, out = written
    text = result.csv_path.read_text()
    with pytest.raises(DataError, match="extra_targets column"):
        RandomCropSegmentationDataset(
            result.csv_path, 32, 4, grid_mode=True, extra_targets={"u": "missing_column"}
        )
    bad = out / "bad.csv"
    bad.write_text(text.replace("scene_001_uncertainty.tif", "nowhere.tif"))
    with pytest.raises(DataError, match=r"row 2 .*nowhere\.tif: file not found"):
        _dataset(bad)
    small = out / "teacher" / "small.tif"
    with rasterio.open(
        small,
        "w",
        driver="GTiff",
        width=8,
        height=8,
        count=7,
        dtype="float32",
        crs="EPSG:32633",
        transform=rasterio.Affine(10, 0, 0, 0, -10, 0),
    ) as dst:
        dst.write(np.zeros((7, 8, 8), np.float32))
    bad.write_text(text.replace("teacher/scene_002_uncertainty.tif", "teacher/small.tif"))
    with pytest.raises(DataError, match=r"row 3 .*small\.tif: size 8 x 8 differs"):
        _dataset(bad)


def test_no_partial_outputs_when_an_image_fails(synthetic, tmp_path):
    teacher = conv_teacher()
    calls = {"n": 0}
    member = teacher.members[1]
    original = member.forward

    def flaky(x):
        calls["n"] += 1
        if calls["n"] > 1:  # one batch of 4 tiles per image: fails on the second
            raise RuntimeError("boom")
        return original(x)

    member.forward = flaky
    with pytest.raises(RuntimeError, match="boom"):
        write_distillation_targets(
            teacher, synthetic.train_csv, tmp_path / "t", tile_size=32, overlap=0
        )
    assert [p for p in (tmp_path / "t").rglob("*") if p.is_file()] == []
    assert Path(tmp_path / "t" / "distill.csv").exists() is False


def test_extra_targets_from_npy_float16_and_uint8(synthetic, tmp_path):
    rows = [line.split(",") for line in synthetic.train_csv.read_text().splitlines()[1:]]
    lines = ["image,mask,half,bytes"]
    arrays = []
    for i, (image, mask, _) in enumerate(rows):
        half = np.random.default_rng(i).random((2, 64, 64)).astype(np.float16)
        np.save(tmp_path / f"h{i}.npy", half)
        np.save(tmp_path / f"b{i}.npy", np.full((64, 64), 51, np.uint8))
        arrays.append(half)
        base = synthetic.out_dir
        lines.append(f"{base / image},{base / mask},h{i}.npy,b{i}.npy")
    csv_path = tmp_path / "extra.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    ds = RandomCropSegmentationDataset(
        csv_path, 32, 4, grid_mode=True, extra_targets={"half": "half", "bytes": "bytes"}
    )
    item = ds[0]
    assert item["targets"]["half"].dtype == torch.float32
    assert torch.equal(
        item["targets"]["half"], torch.from_numpy(arrays[0][:, :32, :32].astype(np.float32))
    )
    assert torch.allclose(item["targets"]["bytes"], torch.full((1, 32, 32), 0.2))
