"""polyhead import-psmt: psmt's UPerNetDualHead checkpoint predicts the same in polyhead."""

from __future__ import annotations

import math

import numpy as np
import pytest
import rasterio
import torch

from polyhead.checkpoint import load_checkpoint
from polyhead.cli import main
from polyhead.errors import ConfigError
from polyhead.psmt.checkpoint import import_checkpoint, polyhead_key, read_psmt_checkpoint
from tests.psmt.conftest import LOG_SIGMAS, MEAN, STD, write_psmt_checkpoint

HEADS = ("A", "B", "average")


def _outputs(model, x):
    with torch.no_grad():
        outputs = model.forward_heads(x)
        return {h: model.class_logits(outputs, h) for h in HEADS}


@pytest.mark.parametrize("use_norm", ["batchnorm", "identity"])
def test_imported_model_equals_psmt_module(tmp_path, use_norm):
    psmt = write_psmt_checkpoint(tmp_path / "psmt.ckpt", use_norm)
    result = import_checkpoint(tmp_path / "psmt.ckpt", tmp_path / "out.ckpt", report=None)
    assert result.log_sigmas == pytest.approx(LOG_SIGMAS)
    loaded = load_checkpoint(tmp_path / "out.ckpt")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = psmt(x)
    got = _outputs(loaded.model, x)
    for head in HEADS:
        torch.testing.assert_close(got[head], expected[head], atol=1e-5, rtol=0)
    assert loaded.model.inference_head == "average"


def test_sigmas_seed_balancing_and_loss_tensors_dropped(psmt_ckpt, tmp_path):
    path, _ = psmt_ckpt
    result = import_checkpoint(path, tmp_path / "out.ckpt", report=None)
    ckpt = torch.load(tmp_path / "out.ckpt", weights_only=True)
    assert not [k for k in ckpt["state_dict"] if "log_sigma" in k]
    assert all(k.startswith("model.") for k in ckpt["state_dict"])
    task = result.config["task"]
    assert task["balancing"]["init"] == pytest.approx(
        {"A": 0.5, "B": -1.0, "consistency": 1.5}  # log sigma^2 = 2 log sigma
    )
    assert task["consistency_warmup_epochs"] == 3 and "loss" not in result.config
    assert result.dropped == ["metrics"]  # psmt keys polyhead does not read, reported


def _write_image(path, pixels):
    profile = dict(driver="GTiff", width=64, height=64, count=3, dtype="uint8")
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(pixels)


def test_cli_import_then_predict_each_head_and_export(psmt_ckpt, tmp_path, capsys):
    path, psmt = psmt_ckpt
    out = tmp_path / "imported.ckpt"
    assert main(["import-psmt", str(path), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"sigma = {math.exp(0.25):.4f}" in printed and "term A" in printed
    pixels = np.random.default_rng(0).integers(0, 256, (3, 64, 64), dtype=np.uint8)
    _write_image(tmp_path / "scene.tif", pixels)
    x = (pixels.astype(np.float32) / 255 - np.array(MEAN)[:, None, None]) / np.array(STD)[
        :, None, None
    ]
    with torch.no_grad():
        expected = psmt(torch.from_numpy(x.astype(np.float32))[None])
    for head in HEADS:
        folder = tmp_path / f"pred-{head}"
        args = ["predict", str(out), str(tmp_path / "scene.tif"), "-o", str(folder)]
        args += ["--head", head, "--probabilities", "--tile-size", "64", "--overlap", "0"]
        assert main(args) == 0
        with rasterio.open(next(folder.glob("*_proba.tif"))) as src:
            proba = src.read()
        want = torch.softmax(expected[head][0], dim=0).numpy()
        np.testing.assert_allclose(proba, want, atol=1e-5)
    onnx = tmp_path / "imported.onnx"
    assert main(["export", str(out), "-o", str(onnx), "--image-size", "64"]) == 0
    assert onnx.is_file()


def test_shape_mismatch_names_the_key_and_writes_nothing(psmt_ckpt, tmp_path):
    path, _ = psmt_ckpt
    from tests.psmt.conftest import psmt_config

    cfg = psmt_config(classes=5)
    cfg["loss"]["num_classes"] = 5
    with pytest.raises(ConfigError, match=r"model\.seg_head_A\.0\.weight has shape \(3, 16"):
        import_checkpoint(path, tmp_path / "out.ckpt", config=cfg, report=None)
    assert list(tmp_path.iterdir()) == [path]


def test_unknown_state_key_is_named(tmp_path):
    torch.save({"state_dict": {"ema.x": torch.zeros(1)}, "hyper_parameters": {}}, tmp_path / "c")
    with pytest.raises(ConfigError, match="'ema.x' is neither psmt's model"):
        import_checkpoint(tmp_path / "c", tmp_path / "o.ckpt", config={"model": {}})


def test_unsupported_model_option_is_one_line(psmt_ckpt, tmp_path):
    path, _ = psmt_ckpt
    from tests.psmt.conftest import psmt_config

    cfg = psmt_config(activation="sigmoid", upsampling=2)
    with pytest.raises(ConfigError) as err:
        import_checkpoint(path, tmp_path / "o.ckpt", config=cfg, report=None)
    assert "activation='sigmoid', upsampling=2" in str(err.value)
    assert "\n" not in str(err.value)


class Payload:
    """A pickled object a checkpoint may not hold."""


def test_only_omegaconf_containers_are_allowed_beyond_tensors(tmp_path):
    torch.save({"state_dict": {}, "hyper_parameters": {"x": Payload()}}, tmp_path / "bad.ckpt")
    with pytest.raises(ConfigError, match="refused to load"):
        read_psmt_checkpoint(tmp_path / "bad.ckpt")


def test_key_renaming():
    assert polyhead_key("decoder_A.fpn_bottleneck.0.weight") == (
        "heads.A.decoder.fpn_bottleneck.0.weight"
    )
    assert polyhead_key("seg_head_B.0.bias") == "heads.B.segmentation_head.0.bias"
    assert polyhead_key("encoder.conv1.weight") == "encoder.conv1.weight"
    assert polyhead_key("head_A.0.bias") is None


def _pairs_csv(path, rows):
    path.write_text("image,mask\n" + "".join(f"{a},{b}\n" for a, b in rows))
    return str(path)


def _with_hard_mask_csv(tmp_path, hard_rows):
    from tests.psmt.conftest import psmt_config

    cfg = psmt_config()
    cfg["val_dataset"].update(
        input_csv_path=_pairs_csv(
            tmp_path / "soft.csv", [("a.tif", "sa.tif"), ("b.tif", "sb.tif")]
        ),
        hard_mask_csv=_pairs_csv(tmp_path / "hard.csv", hard_rows),
        soft_labels=True,
        return_hard_mask=True,
    )
    return cfg


def test_hard_mask_csv_merged_beside_the_output(psmt_ckpt, tmp_path):
    path, _ = psmt_ckpt
    cfg = _with_hard_mask_csv(tmp_path, [("b.tif", "hb.tif"), ("a.tif", "ha.tif")])
    result = import_checkpoint(path, tmp_path / "out" / "m.ckpt", config=cfg, report=None)
    merged = tmp_path / "out" / "m.val_dataset.csv"
    assert result.written == [merged.resolve(), tmp_path / "out" / "m.ckpt"]
    stored = load_checkpoint(tmp_path / "out" / "m.ckpt").config["val_dataset"]
    assert stored["input_csv_path"] == str(merged.resolve()) and stored["crop_size"] == 64
    lines = merged.read_text().splitlines()
    assert lines[0] == "image,mask,soft_mask"
    assert [tuple(c.rsplit("/", 1)[-1] for c in line.split(",")) for line in lines[1:]] == [
        ("a.tif", "ha.tif", "sa.tif"),
        ("b.tif", "hb.tif", "sb.tif"),
    ]


def test_unmatched_hard_mask_row_fails_before_anything_is_written(psmt_ckpt, tmp_path):
    from polyhead.errors import DataError

    path, _ = psmt_ckpt
    cfg = _with_hard_mask_csv(tmp_path, [("a.tif", "ha.tif"), ("c.tif", "hc.tif")])
    with pytest.raises(DataError, match=r"soft.csv: row 2 \(image .*b.tif\) has no row"):
        import_checkpoint(path, tmp_path / "out" / "m.ckpt", config=cfg, report=None)
    assert not (tmp_path / "out").exists()


def test_no_data_keeps_only_normalize_and_safetensors_export_loads_back(psmt_ckpt, tmp_path):
    path, psmt = psmt_ckpt
    cfg = _with_hard_mask_csv(tmp_path, [("a.tif", "ha.tif")])  # would not merge
    (tmp_path / "psmt.yaml").write_text(__import__("yaml").safe_dump(cfg))
    out = tmp_path / "m.ckpt"
    args = ["import-psmt", str(path), "-o", str(out), "--config", str(tmp_path / "psmt.yaml")]
    assert main([*args, "--no-data"]) == 0
    loaded = load_checkpoint(out)
    assert list(loaded.config["val_dataset"]) == ["augmentation_list"]
    assert loaded.normalize is not None
    assert (
        main(["export", str(out), "--format", "safetensors", "-o", str(tmp_path / "m.safetensors")])
        == 0
    )
    back = load_checkpoint(tmp_path / "m.safetensors")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(_outputs(back.model, x)["B"], psmt(x)["B"], atol=1e-5, rtol=0)


def test_cli_refusal_is_one_line_and_exit_code_2(psmt_ckpt, tmp_path, capsys):
    from tests.psmt.conftest import psmt_config

    path, _ = psmt_ckpt
    cfg = psmt_config()
    cfg["val_dataset"]["class_balanced_sampling"] = True
    (tmp_path / "psmt.yaml").write_text(__import__("yaml").safe_dump(cfg))
    args = ["import-psmt", str(path), "-o", str(tmp_path / "m.ckpt")]
    assert main([*args, "--config", str(tmp_path / "psmt.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "val_dataset: psmt RandomCropSegmentationDataset" in err
    assert "class_balanced_sampling=True" in err and not (tmp_path / "m.ckpt").exists()
