"""Post-hoc temperature calibration: the fit, the heads' buffers, old checkpoints, the CLI."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import rasterio
import torch

from polyhead.calibrate_cli import figure_path
from polyhead.checkpoint import load_checkpoint, read_checkpoint
from polyhead.inference.calibration import fit_temperature, nll, reliability
from polyhead.inference.predictor import PROBABILITIES, Predictor, head_outputs
from polyhead.inference.tiling import normalize_tile
from polyhead.models.multihead import AVERAGE


def _tiny_dual(classes: int = 4, in_channels: int = 4):
    from polyhead.models import UPerNetDualHead

    torch.manual_seed(0)
    return UPerNetDualHead(
        encoder_name="resnet18",
        encoder_weights=None,
        decoder_channels=16,
        in_channels=in_channels,
        classes=classes,
    ).eval()


@pytest.mark.parametrize("t_true", [0.5, 2.0])
def test_fit_recovers_a_known_temperature(t_true):
    gen = torch.Generator().manual_seed(0)
    z = 3.0 * torch.randn(200_000, 5, generator=gen)
    labels = torch.multinomial(torch.softmax(z / t_true, 1), 1, generator=gen).squeeze(1)
    t = fit_temperature(z, labels)
    assert abs(t - t_true) / t_true < 0.02
    assert nll(z, labels, t) <= nll(z, labels, 1.0)


def test_reliability_of_a_perfectly_calibrated_sample_is_near_zero():
    gen = torch.Generator().manual_seed(1)
    probs = torch.softmax(2 * torch.randn(100_000, 3, generator=gen), 1)
    labels = torch.multinomial(probs, 1, generator=gen).squeeze(1)
    rel = reliability(probs, labels)
    assert rel.ece < 0.01 and int(rel.count.sum()) == 100_000


def test_activate_and_every_prediction_path_use_the_temperatures():
    model = _tiny_dual()
    x = torch.randn(1, 4, 64, 64)
    with torch.no_grad():
        raw = model.forward_heads(x)
        model.heads["A"].temperature.fill_(2.5)
        model.heads["B"].temperature.fill_(0.7)
        model.average_temperature.fill_(1.6)
        a = torch.softmax(raw["A"] / 2.5, 1)
        avg = torch.softmax((raw["A"] + raw["B"]) / 2 / 1.6, 1)
        torch.testing.assert_close(model.heads["A"].activate(raw["A"]), a)
        torch.testing.assert_close(Predictor(model, head="A")(x)[PROBABILITIES], a)
        torch.testing.assert_close(Predictor(model, head=AVERAGE)(x)[PROBABILITIES], avg)
        out = head_outputs(model, x, ["B", AVERAGE])
    torch.testing.assert_close(out["B"], torch.softmax(raw["B"] / 0.7, 1))
    torch.testing.assert_close(out[AVERAGE], avg)


def test_a_state_dict_without_temperatures_loads_and_strictness_stays():
    model = _tiny_dual()
    state = model.state_dict()
    assert {"heads.A.temperature", "heads.B.temperature", "average_temperature"} <= set(state)
    old = {k: v for k, v in state.items() if not k.endswith("temperature")}
    other = _tiny_dual()
    other.heads["A"].temperature.fill_(3.0)
    other.load_state_dict(old)  # strict
    assert float(other.heads["A"].temperature) == 1.0
    assert float(other.average_temperature) == 1.0
    with pytest.raises(RuntimeError, match="encoder"):
        other.load_state_dict({k: v for k, v in old.items() if not k.startswith("encoder.conv1")})


@pytest.fixture(scope="module")
def old_checkpoint(synthetic, tmp_path_factory):
    """A dual-head checkpoint in the layout polyhead train writes, without temperatures (as
    every checkpoint written before calibration existed)."""
    from polyhead.demo.run import demo_config

    out = tmp_path_factory.mktemp("calibrate")
    cfg = demo_config(synthetic, out, 1, "resnet18", crop_size=32, samples_per_epoch=8)
    cfg["model"]["decoder_channels"] = 16
    model = _tiny_dual(len(synthetic.class_names), synthetic.bands)
    with torch.no_grad():  # sharpen head A: an over-confident head to calibrate
        model.heads["A"].segmentation_head[0].weight.mul_(20)
    state = {f"model.{k}": v for k, v in model.state_dict().items() if "temperature" not in k}
    path = out / "old.ckpt"
    torch.save({"polyhead_config": cfg, "state_dict": state}, path)
    return path


def _first_val_image(synthetic):
    with open(synthetic.val_csv, newline="") as f:
        return str(synthetic.val_csv.parent / next(csv.DictReader(f))["image"])


def test_calibrate_then_predict_end_to_end(synthetic, old_checkpoint, tmp_path, capsys):
    from polyhead.cli import main

    out = tmp_path / "cal.ckpt"
    args = ["calibrate", str(old_checkpoint), "--csv", str(synthetic.val_csv), "-o", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "NLL before" in printed and "average" in printed
    for head in ("A", "B", AVERAGE):
        assert figure_path(out, head).stat().st_size > 0
    before, after = read_checkpoint(old_checkpoint), read_checkpoint(out)
    assert after["polyhead_config"] == before["polyhead_config"]
    assert set(after["state_dict"]) - set(before["state_dict"]) == {
        "model.heads.A.temperature",
        "model.heads.B.temperature",
        "model.average_temperature",
    }
    loaded = load_checkpoint(out)
    model = loaded.model
    temps = {h: float(model.heads[h].temperature) for h in ("A", "B")}
    temps[AVERAGE] = float(model.average_temperature)
    assert temps["A"] > 1.5  # the sharpened head is softened
    assert all(t > 0 and t != 1.0 for t in temps.values())

    image = _first_val_image(synthetic)
    with rasterio.open(image) as src:
        pixels = src.read().astype(np.float32)
    tile = normalize_tile(loaded.normalize, pixels.transpose(1, 2, 0)).transpose(2, 0, 1)
    with torch.no_grad():
        raw = model.forward_heads(torch.from_numpy(np.ascontiguousarray(tile))[None])
    expected = {
        "A": torch.softmax(raw["A"] / temps["A"], 1)[0],
        AVERAGE: torch.softmax((raw["A"] + raw["B"]) / 2 / temps[AVERAGE], 1)[0],
    }
    for head, want in expected.items():
        pred = tmp_path / f"pred-{head}"
        args = ["predict", str(out), image, "-o", str(pred), "--probabilities", "--head", head]
        assert main([*args, "--tile-size", "64", "--overlap", "0"]) == 0
        (proba,) = pred.glob("*_proba.tif")
        with rasterio.open(proba) as src:
            got = torch.from_numpy(src.read())
        torch.testing.assert_close(got, want.float(), atol=1e-4, rtol=1e-4)

    shared = tmp_path / "cal.safetensors"  # export's weights file carries the temperatures
    assert main(["export", str(out), "--format", "safetensors", "-o", str(shared)]) == 0
    again = load_checkpoint(shared).model
    assert float(again.heads["A"].temperature) == temps["A"]
    assert float(again.average_temperature) == temps[AVERAGE]
