import pytest
import torch
import torch.nn.functional as F

from polyhead.errors import ConfigError
from polyhead.inference import Predictor
from polyhead.models import (
    MultiHeadSegmentationModel,
    SegmentationModel,
    ViTEncoder,
    build_decoder,
    register_vit_encoder,
)
from polyhead.models.blocks import AttentionGate, FCNDecoder

ENC = "resnet18"
TINY = "tu-test_convnext"  # tiny timm encoder (its level 1 has 0 channels)
SMALL = {  # small decoder widths keep the tests fast
    "upernet": {"decoder_channels": 32},
    "fpn": {
        "decoder_pyramid_channels": 32,
        "decoder_segmentation_channels": 32,
        "decoder_dropout": 0.0,
    },
    "unet": {"decoder_channels": (64, 32, 16, 16, 8)},
    "segformer": {"decoder_segmentation_channels": 32},
    "pspnet": {"psp_out_channels": 32, "psp_dropout": 0.0},
    "fcn8s": {"decoder_channels": 32},
    "fcn16s": {"decoder_channels": 32},
    "fcn32s": {"decoder_channels": 32},
    "attention_unet": {"decoder_channels": (64, 32, 16, 16, 8)},
    "setr": {"decoder_channels": 32},
    "panoptic_fpn": {"decoder_pyramid_channels": 32, "decoder_segmentation_channels": 16},
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small convs run faster on one thread, and far faster on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("decoder", list(SMALL))
def test_shape_at_odd_input_size_as_head_and_whole_model(decoder):
    torch.manual_seed(0)
    x = torch.randn(1, 4, 45, 61)
    multi = MultiHeadSegmentationModel(
        heads={
            "a": {"decoder": decoder, **SMALL[decoder]},
            "b": {"decoder": decoder, "classes": 2, **SMALL[decoder]},
        },
        encoder_name=ENC,
        in_channels=4,
        classes=3,
        pad_to_stride=True,
    ).eval()
    single = SegmentationModel(
        decoder, encoder_name=TINY, in_channels=4, classes=3, pad_to_stride=True, **SMALL[decoder]
    ).eval()
    with torch.no_grad():
        out = multi(x)
        assert out["a"].shape == (1, 3, 45, 61) and out["b"].shape == (1, 2, 45, 61)
        y = single(x)
        assert list(y) == ["main"] and y["main"].shape == (1, 3, 45, 61)
        probs = Predictor(single)(x)["probabilities"]
    assert probs.shape == (1, 3, 45, 61)


def test_pad_to_stride_pads_and_crops_back():
    torch.manual_seed(0)
    model = SegmentationModel("fcn8s", encoder_name=TINY, classes=2, pad_to_stride=True).eval()
    x = torch.randn(1, 3, 45, 61)
    with torch.no_grad():
        y = model(x)["main"]
        model.pad_to_stride = False  # default: odd sizes raise
        with pytest.raises(RuntimeError, match="pad it to"):
            model(x)
        ref = model(F.pad(x, (0, 3, 0, 19), mode="reflect"))["main"][..., :45, :61]
    torch.testing.assert_close(y, ref)


@pytest.mark.parametrize("out_stride", [4, 1])
def test_setr_on_a_plain_vit(out_stride):
    torch.manual_seed(0)
    model = SegmentationModel(
        "setr",
        encoder_name="vit-test_vit",
        encoder_output_stride=16,
        classes=3,
        pad_to_stride=True,
        decoder_channels=32,
        decoder_out_stride=out_stride,
    ).eval()
    assert isinstance(model.encoder, ViTEncoder) and model.encoder.output_stride == 16
    # progressive upsampling: log2(16 / out_stride) conv + 2x stages
    assert len(model.heads["main"].decoder.stages) == {4: 2, 1: 4}[out_stride]
    with torch.no_grad():
        assert model(torch.randn(2, 3, 45, 61))["main"].shape == (2, 3, 45, 61)


def test_vit_encoder_in_a_multi_head_model():
    assert register_vit_encoder("vit-test_vit")  # makes the name known to build_encoder
    model = MultiHeadSegmentationModel(
        heads={"setr": {"decoder": "setr", "decoder_channels": 16}, "fcn": "fcn16s"},
        encoder_name="vit-test_vit",
        encoder_output_stride=16,
        classes=2,
        pad_to_stride=True,
    ).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 40, 50))
    assert out["setr"].shape == out["fcn"].shape == (1, 2, 40, 50)


def test_vit_encoder_feature_list_contract():
    enc = ViTEncoder("test_vit", in_channels=3, depth=5, output_stride=32)
    enc.set_in_channels(5)
    feats = enc(torch.randn(1, 5, 64, 96))
    assert enc.out_channels == [f.shape[1] for f in feats] == [5, 0, 64, 64, 64, 64]
    assert [f.shape[-1] for f in feats] == [96 // min(2**i, 32) for i in range(6)]
    assert enc.block_indices[-1] == len(enc.model.blocks) - 1
    assert register_vit_encoder("vit-test_vit") and not register_vit_encoder("resnet18")
    with pytest.raises(ConfigError):
        ViTEncoder("no_such_vit_model")


def test_fcn_variants_use_one_two_three_levels():
    feats = [torch.randn(1, c, 64 // 2**i, 64 // 2**i) for i, c in enumerate([3, 8, 8, 16, 24, 32])]
    channels = [f.shape[1] for f in feats]
    decoders = {v: FCNDecoder(channels, classes=2, variant=v).eval() for v in ("32s", "16s", "8s")}
    assert {v: len(d.score) for v, d in decoders.items()} == {"32s": 1, "16s": 2, "8s": 3}
    assert decoders["8s"].levels == [5, 4, 3] and decoders["32s"].levels == [5]
    with torch.no_grad():
        outs = {v: d(feats) for v, d in decoders.items()}
        assert [outs[v].shape[-1] for v in ("32s", "16s", "8s")] == [2, 4, 8]  # strides 32/16/8
        changed = [*feats[:3], torch.randn_like(feats[3]), *feats[4:]]  # level 3 (stride 8)
        torch.testing.assert_close(decoders["32s"](changed), outs["32s"])
        torch.testing.assert_close(decoders["16s"](changed), outs["16s"])
        assert not torch.allclose(decoders["8s"](changed), outs["8s"])
    # as heads: the parameter-free segmentation head upsamples from the finest level's stride
    _, head8 = build_decoder("fcn-8s", channels, 5, 32, 2)
    _, head32 = build_decoder("FCN_32s", channels, 5, 32, 2)
    assert (head8.scale, head32.scale) == (8, 32)
    with pytest.raises(ConfigError, match="variant"):
        build_decoder("fcn", channels, 5, 32, 2, decoder_variant="4s")


def test_attention_gates_output_coefficients_in_unit_range_at_skip_size():
    torch.manual_seed(0)
    model = SegmentationModel(
        "attention_unet", encoder_name=ENC, classes=2, **SMALL["attention_unet"]
    )
    gates = [m for m in model.modules() if isinstance(m, AttentionGate)]
    assert len(gates) == 4  # one per skip (encoder levels 1-4)
    seen = []
    hooks = [g.register_forward_hook(lambda m, inp, out: seen.append((m, inp, out))) for g in gates]
    model(torch.randn(2, 3, 64, 64))
    for h in hooks:
        h.remove()
    assert len(seen) == 4
    for gate, (skip, g), out in seen:
        alpha = gate.attention(skip, g)
        assert alpha.shape == (skip.shape[0], 1, *skip.shape[-2:])
        assert g.shape[-1] < skip.shape[-1]  # gated by the coarser decoder feature
        assert alpha.min() >= 0 and alpha.max() <= 1
        torch.testing.assert_close(out, skip * alpha)


def test_decoder_config_errors():
    with pytest.raises(ConfigError, match="undilated"):
        SegmentationModel("panoptic_fpn", encoder_name=ENC, encoder_output_stride=16)
    with pytest.raises(ConfigError, match="out_stride"):
        SegmentationModel("setr", encoder_name=ENC, decoder_out_stride=3)
    with pytest.raises(ConfigError, match="decoder_channels"):
        SegmentationModel("attention_unet", encoder_name=ENC, decoder_channels=(16, 8))


@pytest.mark.parametrize("decoder", list(SMALL))
def test_optimisation_lowers_the_loss_on_a_fixed_batch(decoder):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    target = (F.avg_pool2d(x[:, :1], 9, 1, 4)[:, 0] > 0).long()
    options = dict(SMALL[decoder])
    if decoder.startswith("fcn"):
        options["decoder_dropout"] = 0.0  # deterministic train-mode loss
    model = SegmentationModel(decoder, encoder_name=TINY, classes=2, **options).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss = F.cross_entropy(model(x)["main"], target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        losses.append(F.cross_entropy(model(x)["main"], target).item())
    assert losses[-1] < losses[0], losses
