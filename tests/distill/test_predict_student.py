"""`polyhead predict` on a distilled student: class map, uncertainty GeoTIFF and figure."""

import logging

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image

from polyhead.checkpoint import load_checkpoint
from polyhead.cli import main
from polyhead.demo.distill_configs import student_config
from polyhead.distill.predict import (
    predict_student,
    target_band,
    teacher_uncertainty_paths,
)
from polyhead.errors import ConfigError
from polyhead.train import train

from .helpers import FAST, TEACHER_ENCODER

TILES = ["--tile-size", "32", "--overlap", "16"]


@pytest.fixture(scope="module")
def student(synthetic, tiny_targets, tmp_path_factory):
    """(student checkpoint, teacher checkpoint, distill.csv): briefly trained, 32 px tiles."""
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("predict_student")
    teachers, distill_csv = tiny_targets
    cfg = student_config(
        synthetic,
        distill_csv,
        distill_csv,
        root / "student",
        epochs=1,
        encoder_name=TEACHER_ENCODER,
        decoder="unet",
        decoder_options={"decoder_channels": [16, 8, 8, 8, 8]},
        crop_size=32,
        samples_per_epoch=16,
        lr=3e-3,
    )
    cfg["pl_trainer"] = {**FAST, "max_epochs": 1}
    return train(cfg).last_checkpoint, teachers[0], distill_csv


def test_predict_student_writes_maps_and_figure(student, synthetic, tmp_path, capsys):
    ckpt, _, distill_csv = student
    matched = synthetic.out_dir / "scenes" / f"{synthetic.train_scenes[0]}.tif"
    unmatched = synthetic.out_dir / "scenes" / f"{synthetic.val_scenes[0]}.tif"
    out = tmp_path / "out"
    argv = [
        "predict",
        str(ckpt),
        str(matched),
        str(unmatched),
        "-o",
        str(out),
        "--teacher-targets",
        str(distill_csv),
        "--probabilities",
        *TILES,
    ]
    assert main(argv) == 0
    std = capsys.readouterr()
    assert "wrote 2 class maps" in std.out and str(out) in std.out
    [warning] = [line for line in std.err.splitlines() if "warning" in line]
    assert unmatched.name in warning and matched.name not in warning

    loaded = load_checkpoint(ckpt)
    with rasterio.open(matched) as src:
        image = src.read()
        probs, unc = predict_student(loaded.model, image, loaded.normalize, 32, 16)
        for suffix, dtype, count in (
            ("classes", "uint8", 1),
            ("uncertainty", "float32", 1),
            ("proba", "float32", probs.shape[0]),
        ):
            with rasterio.open(out / f"{matched.stem}_{suffix}.tif") as ds:
                assert (ds.dtypes[0], ds.count, ds.shape) == (dtype, count, src.shape)
                assert ds.crs == src.crs and ds.transform == src.transform
                written = ds.read()
            if suffix == "classes":
                np.testing.assert_array_equal(written[0], probs.argmax(0))
            elif suffix == "uncertainty":
                np.testing.assert_allclose(written[0], unc, rtol=1e-5, atol=1e-6)

    widths = {}
    for scene in (matched, unmatched):
        with Image.open(out / f"{scene.stem}_uncertainty.png") as png:
            assert png.format == "PNG" and png.height >= 300
            widths[scene] = png.width
    assert widths[matched] > widths[unmatched]  # 4 panels with the ensemble's, else 3


LARGE_AREA = ["--vector", "gpkg", "--precision", "bf16", "--channels-last", "--preview"]


@pytest.mark.parametrize("option", [["--tta", "flips"], ["--crf"], ["--head", "seg"], LARGE_AREA])
def test_student_takes_the_options_of_any_model(student, synthetic, tmp_path, option):
    """One prediction path: TTA, CRF, --head and the large-area outputs (polygons,
    precision, channels-last, preview) work on a student as on any model."""
    scene = synthetic.out_dir / "scenes" / f"{synthetic.val_scenes[0]}.tif"
    out = tmp_path / "out"
    assert main(["predict", str(student[0]), str(scene), "-o", str(out), *option, *TILES]) == 0
    stem = scene.stem
    expected = {f"{stem}_classes.tif", f"{stem}_uncertainty.tif", f"{stem}_uncertainty.png"}
    if option is LARGE_AREA:
        expected |= {f"{stem}_classes.gpkg", f"{stem}_preview.png"}
    assert {p.name for p in out.iterdir()} == expected


def test_student_head_must_be_a_class_map_head(student, synthetic, tmp_path, capsys):
    scene = synthetic.out_dir / "scenes" / f"{synthetic.val_scenes[0]}.tif"
    out = tmp_path / "out"
    assert main(["predict", str(student[0]), str(scene), "-o", str(out), "--head", "unc"]) == 2
    assert "'unc' is not a class-map head" in capsys.readouterr().err
    assert not out.exists()


def test_teacher_targets_errors(student, synthetic, tmp_path, capsys):
    ckpt, teacher, distill_csv = student
    scene = synthetic.out_dir / "scenes" / f"{synthetic.val_scenes[0]}.tif"
    out = tmp_path / "out"
    base = ["predict", str(ckpt), str(scene), "-o", str(out), "--teacher-targets"]
    missing = tmp_path / "nowhere" / "distill.csv"
    assert main([*base, str(missing)]) == 2
    assert f"teacher targets not found: {missing}" in capsys.readouterr().err
    assert main([*base, str(synthetic.train_csv)]) == 2
    assert "not a distill.csv" in capsys.readouterr().err
    argv = [
        "predict",
        str(teacher),
        str(scene),
        "-o",
        str(out),
        "--teacher-targets",
        str(distill_csv),
    ]
    assert main(argv) == 2
    assert "--teacher-targets needs a distilled student" in capsys.readouterr().err
    assert not out.exists()
    assert teacher_uncertainty_paths(distill_csv.parent) == teacher_uncertainty_paths(distill_csv)


def test_target_band_matches_distill_targets_band_order():
    assert target_band("std_winning") == 0
    assert target_band("std_per_class") == 0
    assert target_band("entropy") == 1
    assert target_band("mutual_information") == 2
    with pytest.raises(ConfigError, match="unknown"):
        target_band("variance")


def test_figure_reads_are_decimated_for_large_rasters(tmp_path):
    from polyhead.distill.predict import read_decimated

    data = np.arange(40 * 2100, dtype=np.uint16).reshape(1, 40, 2100)
    path = tmp_path / "wide.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=40,
        width=2100,
        count=1,
        dtype="uint16",
        crs="EPSG:32633",
        transform=rasterio.transform.Affine(10, 0, 0, 0, -10, 0),
    ) as dst:
        dst.write(data)
    small = read_decimated(path, 4096)
    np.testing.assert_array_equal(small, data)
    big = read_decimated(path, 1024)  # every 3rd pixel: 14 x 700
    assert big.shape == (1, 14, 700)
    assert set(np.unique(big)) <= set(np.unique(data))


@pytest.mark.slow  # two Python processes starting torch and Lightning: about a minute
def test_student_on_two_processes_writes_mosaics_and_one_figure(student, synthetic, tmp_path):
    """``--devices 2``: the scene is split in row blocks; the class and uncertainty maps are
    .vrt mosaics equal to one process's, and rank 0 draws the figure from them."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    scene = synthetic.out_dir / "scenes" / f"{synthetic.val_scenes[0]}.tif"
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(repo / "src"), env.get("PYTHONPATH", "")])
    argv = ["predict", str(student[0]), str(scene), *TILES]
    two, one = tmp_path / "two", tmp_path / "one"
    cmd = [sys.executable, "-m", "polyhead", *argv, "-o", str(two), "--devices", "2"]
    proc = subprocess.run(
        [*cmd, "--accelerator", "cpu"], capture_output=True, text=True, timeout=240, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote 1 class maps") == 1  # rank 0 alone reports
    assert main([*argv, "-o", str(one)]) == 0
    stem = scene.stem
    assert (two / f"{stem}_uncertainty.png").is_file()
    for kind in ("classes", "uncertainty"):
        with (
            rasterio.open(two / f"{stem}_{kind}.vrt") as a,
            rasterio.open(one / f"{stem}_{kind}.tif") as b,
        ):
            np.testing.assert_allclose(a.read(), b.read(), atol=1e-6, rtol=1e-5)
