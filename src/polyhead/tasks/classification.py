"""Multi-head classification training: per-head losses, masked missing labels, metrics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryF1Score,
    BinaryPrecision,
    BinaryRecall,
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from polyhead.errors import ConfigError
from polyhead.tasks.base import BaseTask, log_losses

BALANCING = ("fixed", "uncertainty")


def head_metrics(num_outputs: int, ignore_index: int = -1) -> MetricCollection:
    """Precision, recall, F1 and accuracy: binary (positive class 1) for 1- or 2-output heads,
    macro-averaged otherwise."""
    if num_outputs <= 2:
        kw: dict[str, Any] = {"ignore_index": ignore_index}
        return MetricCollection(
            {
                "precision": BinaryPrecision(**kw),
                "recall": BinaryRecall(**kw),
                "f1": BinaryF1Score(**kw),
                "accuracy": BinaryAccuracy(**kw),
            }
        )
    kw = {"num_classes": num_outputs, "ignore_index": ignore_index, "average": "macro"}
    return MetricCollection(
        {
            "precision": MulticlassPrecision(**kw),
            "recall": MulticlassRecall(**kw),
            "f1": MulticlassF1Score(**kw),
            "accuracy": MulticlassAccuracy(**kw),
        }
    )


def _scores(logits: torch.Tensor) -> torch.Tensor:
    """What the metrics get: P(positive) for binary heads, class probabilities otherwise."""
    if logits.shape[-1] == 1:
        return logits[..., 0].float().sigmoid()
    probs = logits.float().softmax(dim=-1)
    return probs[..., 1] if logits.shape[-1] == 2 else probs


class ClassificationTask(BaseTask):
    """Train a model returning ``{head: logits [B, K]}`` on batches of
    ``{"image", "targets": {head: int64 [B]}}`` (e.g. ``MultiHeadClassifier`` on a
    ``ClassificationCSVDataset``).

    The loss of a head is cross-entropy (K >= 2) or BCE on the logit (K == 1, label 0/1), over
    the rows whose label is not ``ignore_index`` (missing); a batch with no label for a head
    adds 0 for it. The total is ``sum(weight_h * loss_h)``; with ``loss_balancing=
    "uncertainty"`` each head also learns ``s_h = log sigma_h^2`` and contributes
    ``weight_h * (exp(-s_h) * loss_h + s_h / 2)`` (Kendall, Gal & Cipolla 2018).
    Logged: ``loss/{stage}``, ``loss/{stage}/{head}``, ``weight/{head}`` (uncertainty) and
    ``val/{head}/precision|recall|f1|accuracy`` (binary heads: positive class 1). Select
    checkpoints on a head with e.g. ``ModelCheckpoint(monitor="val/screen/f1", mode="max")``.

    Args:
        model: the network.
        loss: criterion for heads with K >= 2 outputs (default ``nn.CrossEntropyLoss()``);
            it gets only labelled rows.
        head_weights: ``{head: weight}`` (default 1 each), e.g. ``{screen: 2, other: 1}``.
        loss_balancing: ``"fixed"`` or ``"uncertainty"``.
        derived_tasks: binary tasks read off a K-class head, logged like heads:
            ``{task: {"head": "label", "positive": [2]}}`` gives ``val/task/f1`` etc. with the
            decision ``argmax in positive``. This is how a single K-class baseline is selected
            and compared on the same per-task metric as a multi-head model.
        ignore_index: label value meaning "missing" (the dataset's, passed by ``train``).
    """

    def __init__(
        self,
        model: nn.Module,
        loss: nn.Module | None = None,
        head_weights: Mapping[str, float] | None = None,
        loss_balancing: str = "fixed",
        derived_tasks: Mapping[str, Mapping[str, Any]] | None = None,
        ignore_index: int = -1,
        **base: Any,
    ) -> None:
        super().__init__(**base)
        self.model = model
        self.ignore_index = int(ignore_index)
        outputs = getattr(model, "head_outputs", None)
        if not isinstance(outputs, Mapping):
            raise ConfigError("ClassificationTask: the model needs head_outputs {head: outputs}")
        self.head_outputs = dict(outputs)
        self.criterion = loss if loss is not None else nn.CrossEntropyLoss()
        weights = dict(head_weights or {})
        unknown = sorted(set(weights) - set(self.head_outputs))
        if unknown:
            raise ConfigError(
                f"task.head_weights: no head(s) {unknown}; heads are {list(self.head_outputs)}"
            )
        self.head_weights = {h: float(weights.get(h, 1.0)) for h in self.head_outputs}
        if loss_balancing not in BALANCING:
            raise ConfigError(
                f"task.loss_balancing must be one of {BALANCING}, got {loss_balancing!r}"
            )
        self.loss_balancing = loss_balancing
        self.log_vars = (
            nn.ParameterDict({h: nn.Parameter(torch.zeros(())) for h in self.head_outputs})
            if loss_balancing == "uncertainty"
            else None
        )
        self.derived = self._check_derived(derived_tasks or {})
        metric_outputs = {**self.head_outputs, **{t: 2 for t in self.derived}}
        self.val_metrics = nn.ModuleDict(
            {name: head_metrics(n, self.ignore_index) for name, n in metric_outputs.items()}
        )

    def _check_derived(self, tasks: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple]:
        out = {}
        for name, spec in tasks.items():
            head = spec.get("head")
            if head not in self.head_outputs or self.head_outputs[head] < 2:
                raise ConfigError(
                    f"task.derived_tasks.{name}: 'head' must name a head with 2+ "
                    f"outputs, one of {list(self.head_outputs)}"
                )
            if name in self.head_outputs:
                raise ConfigError(f"task.derived_tasks.{name}: a head has that name already")
            positive = spec.get("positive")
            positive = [positive] if isinstance(positive, int) else list(positive or [])
            if not positive:
                raise ConfigError(f"task.derived_tasks.{name}: give 'positive' class ids")
            out[name] = (head, tuple(int(p) for p in positive))
        return out

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model(x)

    def head_loss(self, head: str, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """One head's loss over its labelled rows (0 when the batch has none)."""
        valid = target != self.ignore_index
        if not bool(valid.any()):
            return logits.sum() * 0.0
        logits, target = logits[valid], target[valid]
        if logits.shape[-1] == 1:
            return F.binary_cross_entropy_with_logits(logits[:, 0].float(), target.float())
        return self.criterion(logits.float(), target)

    def combine(self, parts: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The total loss from per-head losses (fixed or uncertainty weighting)."""
        total = 0.0
        for head, value in parts.items():
            if self.log_vars is not None:
                s = self.log_vars[head]
                value = torch.exp(-s) * value + 0.5 * s
            total = total + self.head_weights[head] * value
        return total

    def _shared_step(self, batch: Mapping[str, Any], stage: str):
        image, targets = batch["image"], batch["targets"]
        outputs = self.model(image)
        parts = {h: self.head_loss(h, outputs[h], targets[h]) for h in self.head_outputs}
        loss = self.combine(parts)
        log_losses(self, stage, loss, parts, image.shape[0])
        if stage == "train" and self.log_vars is not None:
            for head, s in self.log_vars.items():
                self.log(f"weight/{head}", torch.exp(-s.detach()), on_step=False, on_epoch=True)
        return loss, outputs

    def training_step(self, batch, batch_idx):
        loss, _ = self._shared_step(batch, "train")
        return loss

    def validation_step(self, batch, batch_idx):
        _, outputs = self._shared_step(batch, "val")
        targets = batch["targets"]
        for head in self.head_outputs:
            self.val_metrics[head].update(_scores(outputs[head].detach()), targets[head])
        for name, (head, positive) in self.derived.items():
            pred, target = derived_decisions(
                outputs[head].detach(), targets[head], positive, self.ignore_index
            )
            self.val_metrics[name].update(pred.float(), target)

    def on_validation_epoch_end(self) -> None:
        first = next(iter(self.val_metrics))
        for name, metrics in self.val_metrics.items():
            for key, value in metrics.compute().items():
                self.log(f"val/{name}/{key}", value, prog_bar=name == first and key == "f1")
            metrics.reset()


def derived_decisions(
    logits: torch.Tensor, target: torch.Tensor, positive: Sequence[int], ignore_index: int = -1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary (prediction, target) of a task read off a K-class head: ``argmax in positive``
    and ``target in positive`` (missing targets stay ``ignore_index``)."""
    pos = torch.tensor(list(positive), device=logits.device)
    pred = torch.isin(logits.argmax(dim=-1), pos).long()
    binary = torch.isin(target, pos).long()
    return pred, torch.where(target == ignore_index, target, binary)
