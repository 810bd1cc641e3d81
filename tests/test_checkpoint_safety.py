"""Checkpoints load without running anything they hold.

Three payloads, each given to ``polyhead predict``, ``export`` and ``distill-targets``:
(a) a pickled object whose ``__reduce__`` creates a file, (b) a plain-data checkpoint whose
stored model ``_target_`` is ``pathlib.Path.touch``, (c) a model config nesting
``_target_: torch.load`` (``weights_only: false``) on a file holding payload (a). Each must exit
2 with one line naming what was refused and create nothing. A real checkpoint still loads and
predicts, and round-trips through ``export --format safetensors``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import rasterio
import torch

from polyhead.checkpoint import load_checkpoint
from polyhead.cli import main
from polyhead.errors import ConfigError
from polyhead.io import TEMP_MARKER
from polyhead.model_file import spec_path
from polyhead.safe_build import MODEL_TARGETS, build, build_model, check

PAYLOADS = ("reduce", "touch_target", "nested_torch_load")
#: what each payload's error line must name
REFUSED = {
    "reduce": ("refused", "open"),
    "touch_target": ("model._target_", "pathlib.Path.touch"),
    "nested_torch_load": ("model.encoder_name._target_", "torch.load"),
}


class CreatesFile:
    """Unpickling this (``torch.load(weights_only=False)``) creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def real_checkpoint(synthetic, tmp_path_factory) -> Path:
    """A dual-head checkpoint written by Lightning after one tiny epoch."""
    from polyhead.demo.run import demo_config
    from polyhead.train import train

    out = tmp_path_factory.mktemp("safety_run")
    cfg = demo_config(synthetic, out, 1, "resnet18", crop_size=32, samples_per_epoch=8)
    cfg["model"]["decoder_channels"] = 16
    cfg["train_dataset"]["data_loader"]["batch_size"] = 4
    cfg["pl_trainer"].update(
        accelerator="cpu", enable_progress_bar=False, enable_model_summary=False
    )
    result = train(cfg)
    return result.best_checkpoint or result.last_checkpoint


def make_payload(kind: str, real: Path, folder: Path, marker: Path) -> Path:
    """A checkpoint of payload ``kind`` in ``folder`` that would create ``marker``."""
    ckpt = torch.load(real, map_location="cpu", weights_only=True)
    cfg = copy.deepcopy(ckpt["polyhead_config"])
    path = folder / f"{kind}.ckpt"
    if kind == "reduce":
        torch.save({**ckpt, "extra": CreatesFile(marker)}, path)
    elif kind == "touch_target":
        target = {"_target_": "pathlib.Path", "_args_": [str(marker)]}
        cfg["model"] = {"_target_": "pathlib.Path.touch", "self": target}
        torch.save({"polyhead_config": cfg, "state_dict": {}}, path)
    else:
        inner = folder / "inner.pt"
        torch.save({"x": CreatesFile(marker)}, inner)
        load = {"_target_": "torch.load", "f": str(inner), "weights_only": False}
        cfg["model"]["encoder_name"] = load
        torch.save({"polyhead_config": cfg, "state_dict": ckpt["state_dict"]}, path)
    return path


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


@pytest.mark.parametrize("kind", PAYLOADS)
def test_payloads_would_run_code_when_loaded_the_old_way(kind, real_checkpoint, tmp_path):
    """The payloads are live: the pre-allow-list loading (unpickle all, Hydra) runs them."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    marker = tmp_path / "marker"
    path = make_payload(kind, real_checkpoint, tmp_path, marker)
    model_cfg = torch.load(path, map_location="cpu", weights_only=False)["polyhead_config"]["model"]
    if kind == "touch_target":
        instantiate(model_cfg, _convert_="all")
    elif kind == "nested_torch_load":
        with pytest.raises(
            InstantiationException
        ):  # the payload ran before the model failed to build
            instantiate(model_cfg, _convert_="all")
    assert marker.exists()


def commands(ckpt: Path, out: Path, synthetic) -> dict[str, list[str]]:
    scene = synthetic.out_dir / "scenes" / f"{synthetic.val_scenes[0]}.tif"
    return {
        "predict": ["predict", str(ckpt), str(scene), "-o", str(out / "pred")],
        "export": ["export", str(ckpt), "-o", str(out / "model.onnx")],
        "export-safetensors": [
            "export",
            str(ckpt),
            "--format",
            "safetensors",
            "-o",
            str(out / "model.safetensors"),
        ],
        "distill-targets": [
            "distill-targets",
            "--teacher",
            str(ckpt),
            str(ckpt),
            "--csv",
            str(synthetic.val_csv),
            "--out",
            str(out / "targets"),
        ],
    }


@pytest.mark.parametrize("command", ["predict", "export", "export-safetensors", "distill-targets"])
@pytest.mark.parametrize("kind", PAYLOADS)
def test_payload_is_refused_and_creates_nothing(
    kind, command, real_checkpoint, synthetic, tmp_path, capsys
):
    marker = tmp_path / "marker"
    ckpt = make_payload(kind, real_checkpoint, tmp_path, marker)
    argv = commands(ckpt, tmp_path / "out", synthetic)[command]
    before = files_under(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    assert err.startswith(f"polyhead {argv[0]}: error: {ckpt}"), err
    for word in REFUSED[kind]:
        assert word in err, err
    assert not marker.exists()
    assert files_under(tmp_path) == before  # no output, no temp left behind


def test_real_checkpoint_loads_weights_only_and_predicts(real_checkpoint, synthetic, tmp_path):
    torch.load(real_checkpoint, map_location="cpu", weights_only=True)  # nothing else inside
    scene = synthetic.out_dir / "scenes" / f"{synthetic.val_scenes[0]}.tif"
    argv = ["predict", str(real_checkpoint), str(scene), "-o", str(tmp_path)]
    assert main([*argv, "--tile-size", "64", "--overlap", "0"]) == 0
    assert (tmp_path / f"{scene.stem}_classes.tif").is_file()


def test_safetensors_round_trip(real_checkpoint, synthetic, tmp_path):
    out = tmp_path / "shared" / "model.safetensors"
    argv = ["export", str(real_checkpoint), "--format", "safetensors", "-o", str(out)]
    assert main(argv) == 0
    spec = json.loads(spec_path(out).read_text())
    assert spec["model"]["_target_"] == "polyhead.models.UPerNetDualHead"
    assert spec["in_channels"] == synthetic_bands(synthetic) and spec["classes"] == 4
    assert [(h["name"], h["role"]) for h in spec["heads"]] == [("A", "hard"), ("B", "soft")]
    assert spec["normalization"][0]["_target_"] == "albumentations.Normalize"
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.polyhead.json", out.name]
    original, shared = load_checkpoint(real_checkpoint), load_checkpoint(out)
    assert repr(shared.normalize) == repr(original.normalize)
    x = torch.randn(2, spec["in_channels"], 64, 64)
    with torch.no_grad():
        want, got = original.model.forward_heads(x), shared.model.forward_heads(x)
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-6, rtol=0)
    scene = synthetic.out_dir / "scenes" / f"{synthetic.val_scenes[0]}.tif"
    for source, folder in ((out, "pred"), (real_checkpoint, "pred_ckpt")):
        argv = ["predict", str(source), str(scene), "-o", str(tmp_path / folder)]
        assert main([*argv, "--tile-size", "64", "--overlap", "0"]) == 0
    name = f"{scene.stem}_classes.tif"
    with (
        rasterio.open(tmp_path / "pred" / name) as a,
        rasterio.open(tmp_path / "pred_ckpt" / name) as b,
    ):
        assert (a.read() == b.read()).all()
    assert not [p for p in tmp_path.rglob("*") if TEMP_MARKER in p.name]


def synthetic_bands(synthetic) -> int:
    scene = synthetic.out_dir / "scenes" / f"{synthetic.val_scenes[0]}.tif"
    with rasterio.open(scene) as src:
        return src.count


def test_safetensors_spec_goes_through_the_allow_list(real_checkpoint, tmp_path, capsys):
    out = tmp_path / "model.safetensors"
    assert main(["export", str(real_checkpoint), "--format", "safetensors", "-o", str(out)]) == 0
    marker = tmp_path / "marker"
    spec = json.loads(spec_path(out).read_text())
    spec["model"] = {"_target_": "pathlib.Path.touch", "self": str(marker)}
    spec_path(out).write_text(json.dumps(spec))
    capsys.readouterr()
    assert main(["export", str(out), "--format", "onnx", "-o", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert "pathlib.Path.touch" in err and "\n" not in err
    assert not marker.exists() and not (tmp_path / "m.onnx").exists()
    spec_path(out).unlink()
    with pytest.raises(ConfigError, match="no model spec beside it"):
        load_checkpoint(out)


def test_allow_list_rules():
    conv = {"_target_": "torch.nn.Conv2d", "in_channels": 4, "out_channels": 3, "kernel_size": 1}
    assert isinstance(build_model(conv), torch.nn.Conv2d)
    seq = {"_target_": "torch.nn.Sequential", "_args_": [conv, {"_target_": "torch.nn.ReLU"}]}
    assert len(build_model(seq)) == 2
    refused = {
        "polyhead.models.build_encoder": "only classes",  # a function in an allowed package
        "torch.load": "not allowed",
        "os.system": "not allowed",
        "torch.nn.Module.__init__": "not allowed",
        "polyhead.data.RandomCropSegmentationDataset": "not allowed",
    }
    for target, why in refused.items():
        with pytest.raises(ConfigError, match=why):
            check({"_target_": target}, "model", MODEL_TARGETS)
    with pytest.raises(ConfigError, match="_partial_"):
        build_model({**conv, "_partial_": True})
    with pytest.raises(ConfigError, match="_recursive_"):
        build_model({**conv, "_recursive_": False})
    with pytest.raises(ConfigError, match=r"model\.heads\[1\]\._target_: 'builtins\.eval'"):
        check({"heads": [conv, {"_target_": "builtins.eval"}]}, "model", MODEL_TARGETS)
    with pytest.raises(ConfigError, match="checkpoint_path"):
        build_model({**conv, "checkpoint_path": "/elsewhere.pth"})


def test_allow_list_builds_seed_aliases_and_smp_without_fetching():
    seed = "pytorch_segmentation_models_trainer.custom_models.upernet_dual_head.UPerNetDualHead"
    model = build_model(
        {
            "_target_": seed,
            "encoder_name": "resnet18",
            "encoder_weights": "imagenet",  # never fetched: the checkpoint holds the weights
            "in_channels": 3,
            "classes": 2,
            "decoder_channels": 8,
        }
    )
    assert type(model).__name__ == "UPerNetDualHead"
    unet = {"_target_": "segmentation_models_pytorch.Unet", "encoder_name": "resnet18"}
    assert type(build_model({**unet, "encoder_weights": "imagenet"})).__name__ == "Unet"
    norm = [{"_target_": "albumentations.Normalize", "mean": [0.5], "std": [0.5]}]
    from polyhead.safe_build import NORMALIZE_TARGETS

    assert type(build(norm, "steps", NORMALIZE_TARGETS)[0]).__name__ == "Normalize"
    with pytest.raises(ConfigError, match="albumentations.Normalize"):
        build([{"_target_": "albumentations.HorizontalFlip"}], "steps", NORMALIZE_TARGETS)


def test_paths_in_a_stored_config_still_load_and_export(tmp_path):
    """A run config given paths through the Python API holds PosixPath: allowed data."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 3, 1)
    model = {"_target_": "torch.nn.Conv2d", "in_channels": 4, "out_channels": 3, "kernel_size": 1}
    path = tmp_path / "conv.ckpt"
    state = {f"model.{k}": v for k, v in conv.state_dict().items()}
    cfg = {"model": model, "output_dir": tmp_path / "run"}
    torch.save({"polyhead_config": cfg, "state_dict": state}, path)
    loaded = load_checkpoint(path)
    assert Path(loaded.config["output_dir"]) == tmp_path / "run"
    out = tmp_path / "conv.safetensors"
    assert main(["export", str(path), "--format", "safetensors", "-o", str(out)]) == 0
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(load_checkpoint(out).model(x), conv(x), atol=1e-6, rtol=0)
