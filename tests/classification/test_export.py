import argparse

import onnx
import onnxruntime as ort
import pytest
import torch

from polyhead.classification.cli import add_parsers
from polyhead.classification.export import compare_onnx, export_model
from polyhead.errors import ConfigError
from polyhead.models import MultiHeadClassifier

SHUFFLE = "torchvision:shufflenet_v2_x0_5"


def _parser():
    parser = argparse.ArgumentParser(prog="polyhead")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    return parser


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A polyhead-style checkpoint (config + state dict) of a split ShuffleNetV2 x0.5."""
    torch.manual_seed(0)
    cfg = {
        "model": {
            "_target_": "polyhead.models.MultiHeadClassifier",
            "backbone": SHUFFLE,
            "heads": {"screen": 2, "other": 1},
            "split_at": "conv5",
            "encoder_weights": None,
        },
        "val_dataset": {"image_size": 32},
    }
    model = MultiHeadClassifier(**{k: v for k, v in cfg["model"].items() if k != "_target_"})
    model.train()
    with torch.no_grad():  # non-trivial BatchNorm statistics, heads no longer identical
        model(torch.randn(8, 3, 32, 32))
        for p in model.heads["other"].parameters():
            p.add_(0.01 * torch.randn_like(p))
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    path = tmp_path_factory.mktemp("ckpt") / "best.ckpt"
    torch.save({"polyhead_config": cfg, "state_dict": state}, path)
    return path


def test_all_heads_onnx_matches_pytorch_with_dynamic_batch(checkpoint, tmp_path, capsys):
    out = tmp_path / "all.onnx"
    args = _parser().parse_args(
        ["export", str(checkpoint), "--format", "onnx", "--all-heads", "-o", str(out)]
    )
    assert args.func(args) == 0
    assert "max abs difference" in capsys.readouterr().out
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["screen", "other"]
    assert session.get_inputs()[0].shape[0] == "batch"
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["polyhead.outputs"] == "logits" and meta["polyhead.image_size"] == "[32, 32]"
    from polyhead.checkpoint import load_model

    model = load_model(checkpoint)[0]
    for batch in (1, 5):
        x = torch.randn(batch, 3, 32, 32)
        screen, other = session.run(None, {"image": x.numpy()})
        with torch.no_grad():
            ref = model(x)
        assert screen.shape == (batch, 2) and other.shape == (batch, 1)
        torch.testing.assert_close(torch.from_numpy(screen), ref["screen"], atol=1e-4, rtol=0)
        torch.testing.assert_close(torch.from_numpy(other), ref["other"], atol=1e-4, rtol=0)


def test_single_head_with_probabilities(checkpoint, tmp_path):
    from polyhead.checkpoint import load_model

    model = load_model(checkpoint)[0]
    out = export_model(model, tmp_path / "screen.onnx", 32, heads=["screen"], probabilities=True)
    proto = onnx.load(str(out))
    assert [o.name for o in proto.graph.output] == ["screen"]
    # the other head's blocks are not in the graph: smaller than the all-heads export
    full = export_model(model, tmp_path / "full.onnx", 32)
    assert out.stat().st_size < full.stat().st_size * 0.8
    assert compare_onnx(model, out, batch_sizes=(1, 4)) <= 1e-4
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (probs,) = session.run(None, {"image": torch.randn(3, 3, 32, 32).numpy()})
    assert probs.shape == (3, 2) and abs(probs.sum(1) - 1).max() < 1e-5
    with pytest.raises(ConfigError, match="heads are screen, other"):
        export_model(model, tmp_path / "x.onnx", 32, heads=["nope"])
