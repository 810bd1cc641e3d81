"""DistillationTask wiring: heads by role, config entry for predict, metrics."""

import numpy as np
import pytest
import torch

from polyhead.distill.losses import ThreadRecipeLoss
from polyhead.distill.metrics import UncertaintyAgreement, pearson, spearman
from polyhead.errors import ConfigError
from polyhead.losses.uncertainty import to_uncertainty
from polyhead.models import MultiHeadSegmentationModel
from polyhead.models.heads import uncertainty_at_class
from polyhead.tasks.distillation import DistillationTask

HEAD = {"decoder": "unet", "decoder_channels": [16, 8, 8, 8, 8]}


def _model(unc_classes=None, roles=("soft", "uncertainty"), **unc_options):
    unc = {**HEAD, "role": roles[1], **unc_options}
    if unc_classes:
        unc["classes"] = unc_classes
    return MultiHeadSegmentationModel(
        {"seg": {**HEAD, "role": roles[0]}, "unc": unc},
        encoder_name="resnet18",
        encoder_depth=5,
        in_channels=3,
        classes=4,
    )


def _batch(b=2, k=4, s=32):
    g = torch.Generator().manual_seed(0)
    soft = torch.randn(b, k, s, s, generator=g).softmax(1)
    return {
        "image": torch.randn(b, 3, s, s, generator=g),
        "targets": {
            "soft": soft,
            "hard": soft.argmax(1),
            "uncertainty": torch.rand(b, 3 + k, s, s, generator=g) * 0.1,
        },
    }


def test_heads_by_role_and_the_head_owns_its_mapping():
    task = DistillationTask(_model(), config={"model": {}})
    assert (task.seg_head, task.unc_head) == ("seg", "unc")
    unc = task.model.heads["unc"]
    assert (unc.transform, unc.activation, unc.uncertainty_target) == ("sqrt", "none", "entropy")
    assert "distillation" not in task.run_config  # nothing travels through the config
    with pytest.raises(ConfigError, match=r"set heads\.unc: \{transform: identity, activation"):
        DistillationTask(_model(4), loss=ThreadRecipeLoss())  # head and loss disagree
    thread_head = {"transform": "identity", "activation": "sigmoid"}
    thread_head["uncertainty_target"] = "std_per_class"
    thread = DistillationTask(_model(4, **thread_head), loss=ThreadRecipeLoss(), config={})
    assert (
        thread.model.heads["unc"].activate(torch.zeros(1, 4, 1, 1)).flatten().tolist() == [0.5] * 4
    )  # sigmoid, identity
    assert thread.criterion.ignore_index == 255  # the data's, set by the task
    assert thread.eval_target == "std_winning"  # per-class target: compared at the arg-max
    with pytest.raises(ConfigError, match="uncertainty head"):
        DistillationTask(_model(roles=("soft", "hard")))


def test_step_and_validation_metrics():
    task = DistillationTask(_model())
    batch = _batch()
    loss, parts, out, _ = task.compute_loss(batch)
    assert set(parts) == {"kl", "uncertainty"} and torch.isfinite(loss)
    task.val_metrics.update(out["seg"].softmax(1), batch["targets"]["hard"])
    u = uncertainty_at_class(task.model.heads["unc"].activate(out["unc"]), out["seg"])
    assert u.shape == (2, 1, 32, 32) and (u >= 0).all()


def test_per_class_head_is_read_at_the_argmax_class():
    seg = torch.zeros(1, 3, 1, 2)
    seg[0, 2, 0, 0] = 5.0  # pixel 0: class 2; pixel 1: class 0
    unc = torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1).expand(1, 3, 1, 2)
    u = uncertainty_at_class(to_uncertainty(unc, "identity", "none"), seg)
    assert u.flatten().tolist() == pytest.approx([0.3, 0.1])


def test_agreement_metric_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.random((2, 1, 16, 16)).astype(np.float32)
    y = (x**2 + 0.1 * rng.random(x.shape)).astype(np.float32)
    m = UncertaintyAgreement(samples_per_update=10_000)
    m.update(torch.from_numpy(x[:1]), torch.from_numpy(y[:1]))
    m.update(torch.from_numpy(x[1:]), torch.from_numpy(y[1:]))
    r = m.compute()
    assert float(r["pearson"]) == pytest.approx(pearson(x, y), abs=1e-5)
    assert float(r["spearman"]) == pytest.approx(spearman(x, y), abs=1e-5)
    assert float(r["mean_pred"]) == pytest.approx(x.mean(), abs=1e-6)
    assert float(r["std_pred"]) == pytest.approx(x.std(), abs=1e-6)
    assert float(r["std_target"]) == pytest.approx(y.std(), abs=1e-6)
