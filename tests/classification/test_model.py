import pytest
import torch
import torchvision
from safetensors.torch import save_file

from polyhead.errors import ConfigError, WeightsError
from polyhead.models import MultiHeadClassifier
from polyhead.models.classifier import describe_blocks, head_decisions, head_probabilities

SHUFFLE = "torchvision:shufflenet_v2_x0_5"
HEADS = {"screen": 2, "other": 1}


@pytest.mark.parametrize(
    ("backbone", "split_at", "tail"),
    [
        (SHUFFLE, "conv5", ["conv5"]),
        (SHUFFLE, "last_stage", ["stage4", "conv5"]),
        (SHUFFLE, None, []),
        ("test_resnet", -1, ["layer4"]),
        ("timm:test_resnet", "layer3", ["layer3", "layer4"]),
        ("test_efficientnet", "last_stage", ["blocks.4", "conv_head", "bn2"]),
        ("test_convnext", None, []),
    ],
)
def test_forward_dict_and_tuple_for_split_variants(backbone, split_at, tail):
    torch.manual_seed(0)
    model = MultiHeadClassifier(backbone, HEADS, split_at=split_at).eval()
    assert model.split_blocks == tail
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
        assert list(out) == ["screen", "other"]
        assert out["screen"].shape == (2, 2) and out["other"].shape == (2, 1)
        model.set_output("tuple")
        tup = model(x)
    assert isinstance(tup, tuple) and len(tup) == 2
    torch.testing.assert_close(tup[0], out["screen"])
    torch.testing.assert_close(tup[1], out["other"])


def test_split_heads_own_copies_of_the_tail_blocks():
    model = MultiHeadClassifier(SHUFFLE, {"a": 2, "b": 2}, split_at="conv5")
    conv_a = model.heads["a"].blocks["conv5"][0].weight
    conv_b = model.heads["b"].blocks["conv5"][0].weight
    assert conv_a.data_ptr() != conv_b.data_ptr() and torch.equal(conv_a, conv_b)
    assert "conv5" not in model.shared and list(model.shared)[-1] == "stage4"
    shared_only = MultiHeadClassifier(SHUFFLE, {"a": 2, "b": 2}, split_at=None)
    extra = sum(p.numel() for p in model.parameters()) - sum(
        p.numel() for p in shared_only.parameters()
    )
    assert extra == sum(p.numel() for p in model.heads["b"].blocks.parameters())
    # heads train independently: a loss on head a leaves head b's conv5 without gradient
    model(torch.randn(2, 3, 32, 32))["a"].sum().backward()
    assert conv_b.grad is None and conv_a.grad is not None


def test_stage_index_block_names_and_errors():
    assert describe_blocks(SHUFFLE)[-2:] == [("stage4", 4), ("conv5", 4)]
    m = MultiHeadClassifier(SHUFFLE, HEADS, split_at="stage4.2")  # opens stage4
    assert m.split_blocks == ["stage4.2", "stage4.3", "conv5"]
    assert MultiHeadClassifier("test_resnet", HEADS, split_at=3).split_blocks == [
        "layer3",
        "layer4",
    ]
    with pytest.raises(ConfigError, match="not a block.*conv5"):
        MultiHeadClassifier(SHUFFLE, HEADS, split_at="nope")
    with pytest.raises(ConfigError, match="stages 0..4"):
        MultiHeadClassifier(SHUFFLE, HEADS, split_at=7)
    with pytest.raises(ConfigError, match="split_at=null"):
        MultiHeadClassifier("test_vit", HEADS, split_at="last_stage")
    assert MultiHeadClassifier("test_vit", HEADS, split_at=None)(torch.randn(1, 3, 160, 160))[
        "other"
    ].shape == (1, 1)
    with pytest.raises(ConfigError, match="outputs"):
        MultiHeadClassifier(SHUFFLE, {"a": 0})


def test_local_weights_file_loads_into_shared_and_head_blocks(tmp_path):
    torch.manual_seed(1)
    ref = torchvision.models.shufflenet_v2_x0_5()
    path = tmp_path / "shufflenet.pth"
    torch.save(ref.state_dict(), path)
    model = MultiHeadClassifier(SHUFFLE, HEADS, split_at="conv5", encoder_weights=str(path))
    torch.testing.assert_close(model.shared["conv1"][0].weight, ref.conv1[0].weight)
    for head in model.heads.values():
        torch.testing.assert_close(head.blocks["conv5"][1].running_var, ref.conv5[1].running_var)
    # a timm backbone from safetensors, keys with a "model." prefix
    import timm

    tref = timm.create_model("test_resnet", num_classes=0)
    st = tmp_path / "r.safetensors"
    save_file({f"model.{k}": v.contiguous() for k, v in tref.state_dict().items()}, str(st))
    tm = MultiHeadClassifier("test_resnet", HEADS, split_at=None, encoder_weights=st)
    torch.testing.assert_close(tm.backbone.conv1[0].weight, tref.conv1[0].weight)


def test_weights_errors(tmp_path):
    with pytest.raises(WeightsError, match="never downloads"):
        MultiHeadClassifier(SHUFFLE, HEADS, encoder_weights="imagenet")
    with pytest.raises(WeightsError, match="not found"):
        MultiHeadClassifier(SHUFFLE, HEADS, encoder_weights=str(tmp_path / "missing.pth"))
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv1.0.weight": torch.zeros(24, 3, 3, 3)}, wrong)
    with pytest.raises(WeightsError, match="only 1 of"):
        MultiHeadClassifier(SHUFFLE, HEADS, encoder_weights=str(wrong))


def test_probabilities_and_decisions():
    binary = torch.tensor([[0.3], [-2.0]])
    multi = torch.tensor([[0.1, 2.0, -1.0]])
    assert head_decisions(binary).tolist() == [1, 0]
    assert head_decisions(multi).tolist() == [1]
    torch.testing.assert_close(head_probabilities(binary), binary.sigmoid())
    torch.testing.assert_close(head_probabilities(multi).sum(-1), torch.ones(1))
