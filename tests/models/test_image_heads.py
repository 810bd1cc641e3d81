"""Image-level heads beside pixel heads on one encoder: outputs, selection, metrics, task."""

import pytest
import torch

from polyhead.errors import ConfigError
from polyhead.losses.balancing import UncertaintyWeighting
from polyhead.metrics import ImageLevelMetrics
from polyhead.models import MultiHeadSegmentationModel
from polyhead.tasks import SegmentationTask

HEADS = {
    "A": {"decoder": "fpn", "role": "hard", "decoder_segmentation_channels": 32},
    "land": {"role": "classification", "classes": 3},
    "tags": {"role": "multilabel", "classes": 2, "stage": -2, "dropout": 0.1},
    "cover": {"role": "regression", "classes": 4, "activation": "softmax"},
}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MultiHeadSegmentationModel(
        HEADS, encoder_name="resnet18", classes=4, pad_to_stride=True
    ).eval()


def test_image_heads_give_one_vector_per_image_and_are_no_class_maps(model):
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        out = model.forward_heads(x)
    assert out["A"].shape == (2, 4, 40, 40)
    assert out["land"].shape == (2, 3) and out["tags"].shape == (2, 2)
    torch.testing.assert_close(out["cover"].sum(1), torch.ones(2))  # softmax fractions
    assert model.class_map_heads() == ["A"]
    assert model.image_level_heads() == ["land", "tags", "cover"]
    with pytest.raises(ConfigError, match="not a class-map head"):
        model.heads_for("land")
    probs = model.heads["tags"].activate(out["tags"])
    torch.testing.assert_close(probs, torch.sigmoid(out["tags"]))
    # the head is a linear layer on the pooled stage: check against a hand computation
    with torch.no_grad():
        feats = model.encoder(x[..., :32, :32])
        expected = model.heads["land"].linear(feats[-1].mean((2, 3)))
        got = model.forward_heads(x[..., :32, :32], ["land"])["land"]
    torch.testing.assert_close(got, expected)


def test_forward_heads_runs_only_the_heads_asked_for(model):
    calls = []
    handle = model.heads["A"].decoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        with torch.no_grad():
            out = model.forward_heads(torch.randn(1, 3, 32, 32), ["land"])
    finally:
        handle.remove()
    assert list(out) == ["land"] and not calls


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"role": "classification"}, "needs classes"),
        ({"role": "regression", "stage": 9}, "stage is 9; the encoder has 6"),
        ({"role": "regression", "activation": "relu"}, "activation is 'relu'"),
        ({"role": "multilabel", "classes": 2, "decoder_channels": 8}, "not options"),
    ],
)
def test_bad_image_head_options_are_one_line_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        MultiHeadSegmentationModel({"A": "fpn", "x": spec}, encoder_name="resnet18", classes=2)


def test_image_level_metrics_against_hand_computed_values():
    m = ImageLevelMetrics("classification", 3)
    m.update(
        torch.tensor([[2.0, 0, 0], [0, 2.0, 0], [0, 2.0, 0], [0, 0, 2.0]]),
        torch.tensor([0, 1, 2, 2]),
    )
    v = m.compute()
    assert float(v["accuracy"]) == pytest.approx(0.75)
    # class 1: precision 1/2, recall 1 -> F1 2/3; class 2: precision 1, recall 1/2 -> 2/3
    assert [float(v[f"F1_{k}"]) for k in range(3)] == pytest.approx([1.0, 2 / 3, 2 / 3])
    r = ImageLevelMetrics("regression", 1)
    r.update(torch.tensor([[1.0], [2.0], [4.0]]), torch.tensor([[1.0], [3.0], [3.0]]))
    v = r.compute()
    assert float(v["MAE"]) == pytest.approx(2 / 3)
    assert float(v["RMSE"]) == pytest.approx((2 / 3) ** 0.5)
    # R2 = 1 - SS_res / SS_tot = 1 - 2 / (8/3)
    assert float(v["R2"]) == pytest.approx(1 - 2 / (8 / 3), abs=1e-5)
    ml = ImageLevelMetrics("multilabel", 2)
    ml.update(torch.tensor([[0.9, 0.2], [0.8, 0.7]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    v = ml.compute()
    assert float(v["F1_0"]) == pytest.approx(2 / 3) and float(v["F1_1"]) == pytest.approx(1.0)


def test_task_trains_pixel_and_image_heads_with_missing_targets_and_learned_balance(model):
    torch.manual_seed(0)
    net = MultiHeadSegmentationModel(HEADS, encoder_name="resnet18", classes=4)
    task = SegmentationTask(net, balancing=UncertaintyWeighting(init={"land": 1.0}))
    names = {n for n, _ in task.named_parameters()}
    assert {f"criterion.balancer.log_vars.{t}" for t in ("A", "land", "tags", "cover")} <= names
    assert "criterion.balancer.log_vars.land" in task.state_dict()
    opt = task.configure_optimizers()
    in_opt = {id(p) for group in opt.param_groups for p in group["params"]}
    assert id(task.criterion.balancer.log_vars["land"]) in in_opt
    batch = {
        "image": torch.randn(2, 3, 32, 32),
        "targets": {
            "hard": torch.randint(0, 4, (2, 32, 32)),
            "land": torch.tensor([2, 0]),
            "tags": torch.tensor([[1.0, 0.0], [0.0, 0.0]]),
            "cover": torch.full((2, 4), 0.25),
        },
        "present": {"land": torch.tensor([True, False]), "tags": torch.tensor([False, False])},
    }
    loss, outputs = task._shared_step(batch, "val", 0)
    assert torch.isfinite(loss)
    loss.backward()
    assert net.heads["tags"].linear.weight.grad.abs().sum() == 0  # no tags target: no signal
    assert net.heads["land"].linear.weight.grad.abs().sum() > 0
    task.image_metrics["land"].update(outputs["land"][:1], batch["targets"]["land"][:1])
    assert float(task.image_metrics["land"].compute()["accuracy"]) in (0.0, 1.0)
