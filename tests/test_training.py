"""End-to-end: config -> training -> checkpoint -> head switch -> predict, on tiny data."""

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from polyhead.checkpoint import load_checkpoint, load_model
from polyhead.cli import main
from polyhead.config import build
from polyhead.data import RandomCropSegmentationDataset
from polyhead.demo.run import demo_config
from polyhead.inference.predict import predict_files
from polyhead.inference.predictor import Predictor
from polyhead.models import UPerNetDualHead
from polyhead.train import train

REPO = Path(__file__).resolve().parents[1]
FAST = {
    "max_epochs": 2,
    "accelerator": "cpu",
    "devices": 1,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "log_every_n_steps": 1,
}


def tiny_config(data, out_dir: Path, **trainer):
    cfg = demo_config(
        data, out_dir, epochs=2, encoder_name="resnet18", crop_size=32, samples_per_epoch=8
    )
    cfg["model"]["decoder_channels"] = 16
    cfg["train_dataset"]["data_loader"]["batch_size"] = 4
    cfg["pl_trainer"] = {**FAST, **trainer}
    return cfg


@pytest.fixture(scope="module")
def trained(synthetic, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = tiny_config(synthetic, out)
    return cfg, train(cfg)


def test_training_logs_each_term_and_checkpoints(trained):
    cfg, result = trained
    assert result.best_checkpoint is not None and result.best_checkpoint.is_file()
    m = result.metrics
    for key in (
        "loss/val",
        "loss/train/A",
        "loss/train/B",
        "loss/train/consistency",
        "val/A/mIoU",
        "val/B/mIoU",
        "val/average/mIoU",
        "val/mIoU",
        "val/A/ECE",
        "val/average/pixel_accuracy",
        "val/B/IoU_0",
    ):
        assert key in m, key
    assert m["val/mIoU"] == m["val/average/mIoU"]  # inference_head: average
    assert result.run_dir.parent == Path(cfg["output_dir"])  # its own run folder
    log = (result.run_dir / "metrics.csv").read_text()
    assert "loss/train/consistency" in log


def test_checkpoint_holds_ema_weights_and_switches_head(trained, synthetic):
    cfg, result = trained
    ckpt = torch.load(result.best_checkpoint, map_location="cpu", weights_only=False)
    assert ckpt["polyhead_config"]["model"]["inference_head"] == "average"
    model_avg, _ = load_model(result.best_checkpoint)
    model_b, cfg_b = load_model(result.best_checkpoint, ["model.inference_head=B"])
    assert isinstance(model_b, UPerNetDualHead) and cfg_b["model"]["inference_head"] == "B"
    x = torch.randn(1, synthetic.bands, 64, 64)
    with torch.no_grad():
        avg = model_avg(x)
        torch.testing.assert_close(model_b(x), model_avg.last_logits_B)
        torch.testing.assert_close(avg, (model_avg.last_logits_A + model_avg.last_logits_B) / 2)


def test_predict_writes_georeferenced_maps_and_matches_model(trained, synthetic, tmp_path):
    cfg, result = trained
    loaded = load_checkpoint(result.best_checkpoint)
    written = predict_files(
        loaded.model,
        [synthetic.val_csv],
        tmp_path,
        normalize=loaded.normalize,
        head="A",
        tile_size=64,
        overlap=0,
        write_probabilities=True,
        progress=False,
    )
    assert len(written) == 1
    scene = synthetic.out_dir / "scenes" / f"{synthetic.val_scenes[0]}.tif"
    with rasterio.open(written[0]) as out, rasterio.open(scene) as src:
        assert out.crs == src.crs and out.transform == src.transform
        classes = out.read(1)
    with rasterio.open(tmp_path / f"{scene.stem}_proba.tif") as proba:
        assert proba.count == len(synthetic.class_names)
        np.testing.assert_allclose(proba.read().sum(0), 1.0, atol=1e-4)
    # same as running head A on the dataset's (normalised) whole tile
    val = RandomCropSegmentationDataset(
        synthetic.val_csv,
        64,
        4,
        grid_mode=True,
        augmentation_list=build(cfg["val_dataset"]["augmentation_list"], "augmentation_list"),
    )
    model, _ = load_model(result.best_checkpoint, ["model.inference_head=A"])
    with torch.no_grad():
        expected = model(val[0]["image"][None]).argmax(1)[0].numpy()
    assert (classes == expected).mean() > 0.999


def test_predict_rejects_missing_input_before_loading(tmp_path, capsys):
    args = ["predict", str(tmp_path / "nope.ckpt"), str(tmp_path / "missing.tif"), "-o", "x"]
    assert main(args) == 2
    assert "missing.tif" in capsys.readouterr().err  # the input, not the checkpoint, first


def test_seed_config_runs_with_only_paths_changed(synthetic_rgb6, tmp_path, capsys):
    """The seed's YAML, _target_ lines untouched, through the CLI (in-process)."""
    d = synthetic_rgb6
    overrides = [
        f"train_dataset.input_csv_path={d.train_csv}",
        f"val_dataset.input_csv_path={d.val_csv}",
        "model.encoder_weights=null",
        # sizes for a 2-core test machine; every _target_ stays as the seed wrote it
        "model.encoder_name=tu-test_convnext",
        "model.decoder_channels=16",
        "train_dataset.crop_size=32",
        "val_dataset.crop_size=32",
        "train_dataset.samples_per_epoch=4",
        "train_dataset.data_loader.batch_size=2",
        "train_dataset.data_loader.num_workers=0",
        "val_dataset.data_loader.num_workers=0",
        f"+output_dir={tmp_path}",
        "+pl_trainer.max_epochs=1",
        "+pl_trainer.accelerator=cpu",
        "+pl_trainer.enable_progress_bar=false",
    ]
    rc = main(
        [
            "train",
            "--config-dir",
            str(REPO / "tests/configs"),
            "--config-name",
            "seed_full_example",
            *overrides,
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    for alias in (
        "upernet_dual_head.UPerNetDualHead -> polyhead.models.UPerNetDualHead",
        "RandomCropSegmentationDataset -> polyhead.data.RandomCropSegmentationDataset",
        "EMACallback -> polyhead.callbacks.EMACallback",
        "pytorch_lightning.callbacks.ModelCheckpoint -> lightning.pytorch.callbacks",
    ):
        assert out.count(alias) == 1, alias
    assert list(tmp_path.glob("run-*/checkpoints/*.ckpt"))


def test_predict_cli_with_tta_and_uncertainty(trained, synthetic, tmp_path):
    _, result = trained
    scene = synthetic.out_dir / "scenes" / f"{synthetic.val_scenes[0]}.tif"
    rc = main(
        [
            "predict",
            str(result.best_checkpoint),
            str(scene),
            "-o",
            str(tmp_path),
            "--head",
            "B",
            "--tta",
            "flips",
            "--uncertainty",
            "--tile-size",
            "64",
            "--overlap",
            "16",
        ]
    )
    assert rc == 0
    with rasterio.open(tmp_path / f"{scene.stem}_uncertainty.tif") as unc:
        values = unc.read(1)
    assert values.min() >= 0 and values.max() <= 1 and values.std() > 0
    assert (tmp_path / f"{scene.stem}_classes.tif").is_file()


def test_export_a_dual_head_checkpoint_one_output_per_head(trained, tmp_path, capsys):
    """`polyhead export` on a segmentation checkpoint: A, B and average, checked by onnxruntime."""
    import onnx

    _, result = trained
    out = tmp_path / "dual.onnx"
    argv = ["export", str(result.best_checkpoint), "-o", str(out), "--head", "A"]
    assert main([*argv, "--head", "B", "--head", "average"]) == 0
    assert "max abs difference" in capsys.readouterr().out
    graph = onnx.load(str(out)).graph
    assert [o.name for o in graph.output] == ["A", "B", "average"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dual.onnx"]  # no temp file left
    assert main([*argv[:-2], "--head", "C"]) == 2
    assert "no head ['C'] in this model; valid: ['A', 'B', 'average']" in capsys.readouterr().err


def test_predict_head_a_runs_only_head_a(trained):
    """The prediction path computes only the heads its answer needs."""
    _, result = trained
    model = load_checkpoint(result.best_checkpoint).model
    called = []
    for name, head in model.heads.items():
        head.register_forward_hook(lambda m, i, o, name=name: called.append(name))
    x = torch.randn(1, model.in_channels, 64, 64)
    with torch.no_grad():
        Predictor(model, head="A")(x)
        assert called == ["A"]
        called.clear()
        Predictor(model, head="average")(x)
    assert called == ["A", "B"]


def test_top_level_load_checkpoint_is_the_checkpoint_loader(trained):
    import polyhead

    _, result = trained
    loaded = polyhead.load_checkpoint(result.best_checkpoint)
    reference = load_checkpoint(result.best_checkpoint)
    assert loaded.config == reference.config and not loaded.model.training
    for (name, a), (_, b) in zip(
        loaded.model.state_dict().items(), reference.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
