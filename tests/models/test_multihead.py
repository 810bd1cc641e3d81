import pytest
import segmentation_models_pytorch as smp
import timm
import torch
from safetensors.torch import save_file

from polyhead.errors import ConfigError, WeightsError
from polyhead.models import MultiHeadSegmentationModel, UPerNetDualHead, encoder

ENC = "tu-test_convnext"


def _dual(**kw):
    kw.setdefault("encoder_weights", None)
    return UPerNetDualHead(encoder_name=ENC, decoder_channels=32, classes=4, **kw)


def test_head_a_equals_smp_upernet():
    torch.manual_seed(0)
    ours = _dual(inference_head="A", in_channels=5).eval()
    ref = smp.UPerNet(
        encoder_name=ENC, encoder_weights=None, decoder_channels=32, classes=4, in_channels=5
    ).eval()
    ours.encoder.load_state_dict(ref.encoder.state_dict())
    ours.heads["A"].decoder.load_state_dict(ref.decoder.state_dict())
    ours.heads["A"].segmentation_head.load_state_dict(ref.segmentation_head.state_dict())
    x = torch.randn(2, 5, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=0)


def test_dual_head_outputs_and_switching():
    torch.manual_seed(0)
    model = _dual(inference_head="average").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        avg = model(x)
        a, b = model.last_logits_A, model.last_logits_B
        assert avg.shape == a.shape == b.shape == (1, 4, 64, 64)
        assert not torch.allclose(a, b)  # two independent decoders
        torch.testing.assert_close(avg, (a + b) / 2)
        # switching without retraining: same weights, other head
        state = model.state_dict()
        other = _dual(inference_head="B").eval()
        other.load_state_dict(state)
        torch.testing.assert_close(other(x), b)
        model.inference_head = "A"
        torch.testing.assert_close(model(x), a)
    with pytest.raises(ConfigError, match="valid"):
        model.inference_head = "C"


@pytest.mark.parametrize(
    "decoder,extra",
    [
        ("upernet", {}),
        ("fpn", {}),
        ("unet", {}),
        ("segformer", {}),
        ("pspnet", {}),
        ("deeplabv3plus", {"encoder_output_stride": 16}),
    ],
)
def test_head_types_shapes(decoder, extra):
    model = MultiHeadSegmentationModel(
        heads={
            "seg": {"decoder": decoder, "role": "hard"},
            "unc": {"decoder": "pspnet" if extra else "fpn", "role": "uncertainty"},
        },
        encoder_name="resnet18",
        classes=3,
        **extra,
    )
    out = model(torch.randn(2, 3, 64, 96))
    assert out["seg"].shape == (2, 3, 64, 96)
    assert out["unc"].shape == (2, 1, 64, 96)


def test_errors_name_what_to_change():
    with pytest.raises(ConfigError, match="valid decoders"):
        MultiHeadSegmentationModel(heads={"a": "nope"}, encoder_name="resnet18")
    with pytest.raises(ConfigError, match="encoder_output_stride"):
        MultiHeadSegmentationModel(heads={"a": "deeplabv3plus"}, encoder_name="resnet18")
    with pytest.raises(ConfigError, match="encoder_output_stride 32"):
        MultiHeadSegmentationModel(
            heads={"a": "deeplabv3plus", "b": "fpn"},
            encoder_name="resnet18",
            encoder_output_stride=16,
        )
    model = MultiHeadSegmentationModel(heads={"a": "fpn"}, encoder_name="resnet18")
    with pytest.raises(RuntimeError, match=r"pad it to \(64, 64\)"):
        model(torch.randn(1, 3, 50, 64))


def test_named_weights_offline_fail_fast(monkeypatch):
    monkeypatch.setattr(encoder, "_network_reachable", lambda timeout=3.0: False)
    with pytest.raises(WeightsError, match="local file"):
        _dual(encoder_weights="imagenet")


def test_local_weights_files(tmp_path):
    torch.manual_seed(1)
    src = _dual()
    path = tmp_path / "enc.safetensors"
    save_file({k: v.contiguous() for k, v in src.encoder.state_dict().items()}, str(path))
    loaded = _dual(encoder_weights=str(path))
    for k, v in src.encoder.state_dict().items():
        torch.testing.assert_close(loaded.encoder.state_dict()[k], v)

    # a bare timm model's state dict (classifier keys and all), adapted to 4 bands
    timm_model = timm.create_model("test_convnext", pretrained=False)
    pt = tmp_path / "timm.pth"
    torch.save(timm_model.state_dict(), pt)
    four = _dual(encoder_weights=str(pt), in_channels=4)
    sd = four.encoder.state_dict()
    key = next(k for k in sd if k.endswith("weight") and sd[k].ndim == 4)
    ref = timm_model.state_dict()[key.removeprefix("model.").replace("stem_0", "stem.0")]
    assert sd[key].shape[1] == 4
    torch.testing.assert_close(sd[key][:, 3], ref[:, 0] * 3 / 4)

    with pytest.raises(WeightsError, match="not found"):
        _dual(encoder_weights=str(tmp_path / "missing.pt"))


def test_any_logits_network_trains_as_a_one_head_model(tmp_path):
    """A network of another library keeps working: wrapped as head ``main``, saved, reloaded."""
    from polyhead.checkpoint import load_checkpoint
    from polyhead.tasks import SegmentationTask

    cfg = {"_target_": "segmentation_models_pytorch.Unet", "encoder_name": "resnet18"}
    cfg.update(encoder_weights=None, classes=3, encoder_depth=3, decoder_channels=[16, 8, 8])
    net = smp.Unet(
        "resnet18", encoder_weights=None, classes=3, encoder_depth=3, decoder_channels=(16, 8, 8)
    )
    task = SegmentationTask(net, num_classes=3, config={"model": cfg})
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    loss, parts = task.criterion(task.model.forward_heads(x), {"hard": y})
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(net(x), y))
    assert list(parts) == ["main"] and task.metric_heads == ["main"]
    path = tmp_path / "m.ckpt"
    torch.save({"polyhead_config": task.run_config, "state_dict": task.state_dict()}, path)
    loaded = load_checkpoint(path).model
    task.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)["main"], task.model(x)["main"])
