import math

import pytest
import torch

from polyhead.checkpoint import load_model
from polyhead.classification.digits import demo_config
from polyhead.errors import ConfigError
from polyhead.models import MultiHeadClassifier
from polyhead.tasks.classification import ClassificationTask, derived_decisions
from polyhead.train import train

TINY = "test_resnet"


def _task(**kw):
    model = MultiHeadClassifier(TINY, {"screen": 2, "other": 1}, split_at="last_stage")
    return ClassificationTask(model, **kw)


def test_missing_labels_are_masked_and_weights_applied():
    task = _task(head_weights={"screen": 2.0})
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.5], [-3.0, 3.0]])
    full = torch.nn.functional.cross_entropy(logits[[0, 2]], torch.tensor([0, 1]))
    loss = task.head_loss("screen", logits, torch.tensor([0, -1, 1]))
    torch.testing.assert_close(loss, full)
    none = task.head_loss("other", torch.randn(3, 1, requires_grad=True), torch.full((3,), -1))
    assert none.item() == 0.0 and none.requires_grad
    bce = task.head_loss("other", torch.tensor([[1.0], [-1.0]]), torch.tensor([1, -1]))
    torch.testing.assert_close(bce, torch.nn.functional.softplus(torch.tensor(-1.0)))
    total = task.combine({"screen": torch.tensor(1.0), "other": torch.tensor(3.0)})
    assert total.item() == pytest.approx(2 * 1 + 3)


def test_uncertainty_weighting_learns_log_variances():
    task = _task(loss_balancing="uncertainty")
    assert set(task.log_vars) == {"screen", "other"}
    with torch.no_grad():
        task.log_vars["screen"].fill_(math.log(4.0))
    total = task.combine({"screen": torch.tensor(2.0), "other": torch.tensor(1.0)})
    assert total.item() == pytest.approx(2.0 / 4 + 0.5 * math.log(4.0) + 1.0)
    assert any(p is task.log_vars["screen"] for p in task.parameters())
    with pytest.raises(ConfigError, match="loss_balancing"):
        _task(loss_balancing="magic")
    with pytest.raises(ConfigError, match="head_weights"):
        _task(head_weights={"nope": 1.0})


def test_derived_task_decisions():
    logits = torch.tensor([[3.0, 0, 0], [0, 0, 3.0], [0, 3.0, 0]])
    pred, target = derived_decisions(logits, torch.tensor([2, 2, -1]), [2])
    assert pred.tolist() == [0, 1, 0] and target.tolist() == [1, 1, -1]


def test_training_logs_per_head_losses_and_metrics_and_selects_on_a_head(digits, tmp_path):
    cfg = demo_config(
        digits,
        tmp_path,
        epochs=2,
        image_size=32,
        backbone=TINY,
        split_at="last_stage",
        batch_size=16,
    )
    cfg["task"]["loss_balancing"] = "uncertainty"
    cfg["pl_trainer"].update(enable_progress_bar=False, max_steps=4, log_every_n_steps=1)
    result = train(cfg)
    m = result.metrics
    for head in ("screen", "other"):
        assert f"loss/train/{head}" in m and f"loss/val/{head}" in m and f"weight/{head}" in m
        for key in ("precision", "recall", "f1", "accuracy"):
            assert 0.0 <= m[f"val/{head}/{key}"] <= 1.0
    assert "loss/val" in m
    assert result.best_checkpoint is not None
    # the full training state (callbacks included) is in last.ckpt; best holds the weights
    ckpt = torch.load(result.last_checkpoint, map_location="cpu", weights_only=False)
    callback = next(v for k, v in ckpt["callbacks"].items() if "Checkpoint{" in k)
    assert callback["monitor"] == "val/screen/f1"
    model, stored = load_model(result.best_checkpoint)
    assert stored["model"]["heads"] == {"screen": 2, "other": 2}
    assert set(model(torch.randn(1, 3, 32, 32))) == {"screen", "other"}
