"""Fast end-to-end: 2 briefly trained teachers -> distill-targets CLI -> student -> agreement,
predict (uncertainty map + figure), and one live-teacher step."""

import argparse
import logging

import numpy as np
import pytest
import rasterio
import torch
from hydra.utils import instantiate

from polyhead.checkpoint import load_checkpoint
from polyhead.demo.distill_configs import student_config
from polyhead.distill.cli import add_parsers
from polyhead.distill.evaluate import evaluate_student
from polyhead.distill.predict import predict_student_files
from polyhead.train import build_task, train

from .helpers import FAST, TEACHER_ENCODER, train_teacher


@pytest.fixture(scope="module")
def pipeline(synthetic, tmp_path_factory):
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("distill")
    ckpts = [
        train_teacher(synthetic, root / f"t{i}", dec, i) for i, dec in enumerate(("unet", "unet"))
    ]
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command"))
    for split, csv_path in (("train", synthetic.train_csv), ("val", synthetic.val_csv)):
        args = parser.parse_args(
            [
                "distill-targets",
                "--teacher",
                *map(str, ckpts),
                "--csv",
                str(csv_path),
                "--out",
                str(root / split),
                "--tile-size",
                "32",
                "--overlap",
                "16",
            ]
        )
        assert args.func(args) == 0
    cfg = student_config(
        synthetic,
        root / "train" / "distill.csv",
        root / "val" / "distill.csv",
        root / "student",
        epochs=4,
        encoder_name=TEACHER_ENCODER,
        decoder="unet",
        decoder_options={"decoder_channels": [32, 16, 16, 8, 8]},
        crop_size=32,
        samples_per_epoch=128,
        lr=3e-3,
    )
    cfg["pl_trainer"] = {**FAST, "max_epochs": 4}
    result = train(cfg)
    return root, ckpts, cfg, result


def test_cli_writes_cached_targets(pipeline):
    root, *_ = pipeline
    header = (root / "train" / "distill.csv").read_text().splitlines()[0]
    assert header == "image,mask,soft_mask,uncertainty"
    assert len(list((root / "train" / "teacher").glob("*_uncertainty.tif"))) == 3


def test_student_logs_every_term_and_learns_the_uncertainty(pipeline):
    root, _, _, result = pipeline
    m = result.metrics
    for key in (
        "loss/train",
        "loss/train/kl",
        "loss/train/uncertainty",
        "loss/val/uncertainty",
        "val/mIoU",
        "val/uncertainty/pearson",
        "val/uncertainty/spearman",
        "val/uncertainty/mean_pred",
        "val/uncertainty/mean_target",
    ):
        assert key in m, key
    loaded = load_checkpoint(result.last_checkpoint)
    res = evaluate_student(
        loaded.model, root / "val" / "distill.csv", loaded.normalize, tile_size=32, overlap=16
    )
    assert res["pearson"] > 0.3 and res["spearman"] > 0.3, res
    assert res["mean_pred"] > 0.3 * res["mean_target"], res


def test_predict_writes_uncertainty_next_to_class_map(pipeline, synthetic, tmp_path):
    root, _, _, result = pipeline
    scene = synthetic.out_dir / "scenes" / f"{synthetic.val_scenes[0]}.tif"
    ref = {scene.stem: root / "val" / "teacher" / f"{scene.stem}_uncertainty.tif"}
    loaded = load_checkpoint(result.last_checkpoint)
    [out] = predict_student_files(
        loaded.model,
        [scene],
        tmp_path,
        normalize=loaded.normalize,
        tile_size=32,
        overlap=16,
        reference_uncertainty=ref,
    )
    with rasterio.open(out.uncertainty) as unc, rasterio.open(scene) as src:
        assert unc.dtypes[0] == "float32" and unc.transform == src.transform
        assert np.all(unc.read() >= 0)
    assert out.class_map.is_file() and out.figure.stat().st_size > 1000


def test_live_teacher_mode_runs_a_step(pipeline, synthetic):
    root, ckpts, cfg, _ = pipeline
    live = {**cfg, "task": {**cfg["task"], "teacher": [str(p) for p in ckpts]}}
    live["train_dataset"] = {k: v for k, v in cfg["train_dataset"].items() if k != "extra_targets"}
    live["train_dataset"]["input_csv_path"] = str(synthetic.train_csv)
    task = build_task(live, ignore_index=255)
    batch = next(iter(instantiate(live["train_dataset"], _convert_="all").make_loader()))
    assert "uncertainty" not in batch["targets"]
    loss, parts, _, targets = task.compute_loss(batch)
    loss.backward()
    assert torch.isfinite(loss) and set(parts) == {"kl", "uncertainty"}
    assert targets["uncertainty"].shape[1] == 3 + 4
    assert all(p.grad is not None for p in task.model.heads["unc"].parameters())
    assert "teacher" not in "".join(task.state_dict())
