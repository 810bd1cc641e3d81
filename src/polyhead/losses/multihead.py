"""Sum each head's own loss on its own target; add the consistency term between heads."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from polyhead.losses.balancing import LossBalancer, build_balancer
from polyhead.losses.consistency import HeadConsistencyLoss
from polyhead.losses.hard_label import ensure_ignore_index
from polyhead.losses.soft_label import SoftLabelLoss, valid_soft_pixels
from polyhead.losses.uncertainty import UncertaintyRegressionLoss

#: the loss a head gets, by the target key it learns from, when the task names none
DEFAULT_LOSSES: dict[str, Callable[[], nn.Module]] = {
    "hard": nn.CrossEntropyLoss,
    "soft": SoftLabelLoss,
    "uncertainty": UncertaintyRegressionLoss,
}


class _KeyTarget:
    """A head given only by its target key (``{"A": "hard"}``): the key's default loss."""

    def __init__(self, target_key: str) -> None:
        if target_key not in DEFAULT_LOSSES:
            raise KeyError(f"unknown target key {target_key!r}; valid: {sorted(DEFAULT_LOSSES)}")
        self.target_key = target_key

    def select_target(self, targets: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        return targets.get(self.target_key)

    def default_loss(self) -> nn.Module:
        return DEFAULT_LOSSES[self.target_key]()


class MultiHeadLoss(nn.Module):
    """Total loss of a multi-head model plus its named parts.

    Args:
        heads: ``{name: head}``: the model's heads (`polyhead.models.heads.Head`: each gives
            its ``target_key``, ``select_target`` and ``default_loss``), or ``{name: target
            key}`` (``hard``, ``soft``, ``uncertainty``).
        losses: losses by head name or by target key; a head with neither gets its default.
        hard_loss, soft_loss: shorthands for ``losses["hard"]`` and ``losses["soft"]``.
        weights: per-head weights (default 1).
        consistency: divergence between the first hard and first soft head (default
            Jensen-Shannon; it needs both).
        consistency_weight: its weight once warmed up (0 switches it off).
        consistency_warmup_epochs: linear ramp of the weight from 0 over these epochs, so
            each head first learns its own target before they are pulled together.
        ignore_index: hard-mask value that marks unlabelled pixels; losses that take one and
            were left at their library default get it.
        balancing: how the terms are weighed (`polyhead.losses.balancing`): a `LossBalancer`,
            ``fixed`` (default), ``uncertainty`` or ``dwa``. Its terms are the heads' names
            plus ``consistency`` when the loss has that term.
    """

    def __init__(
        self,
        heads: Mapping[str, Any],
        losses: Mapping[str, nn.Module] | None = None,
        hard_loss: nn.Module | None = None,
        soft_loss: nn.Module | None = None,
        weights: Mapping[str, float] | None = None,
        consistency: nn.Module | None = None,
        consistency_weight: float = 0.1,
        consistency_warmup_epochs: float = 1.0,
        ignore_index: int = 255,
        balancing: LossBalancer | str | None = None,
    ) -> None:
        super().__init__()
        self.heads = {n: _KeyTarget(h) if isinstance(h, str) else h for n, h in heads.items()}
        self.ignore_index = ignore_index
        named = dict(losses or {})
        for key, loss in (("hard", hard_loss), ("soft", soft_loss)):
            if loss is not None:
                named.setdefault(key, loss)
        self.losses = nn.ModuleDict()
        for name, head in self.heads.items():
            loss = named.get(name, named.get(head.target_key))
            loss = head.default_loss() if loss is None else loss
            self.losses[name] = ensure_ignore_index(loss, ignore_index)
        self.weights = {name: float((weights or {}).get(name, 1.0)) for name in self.heads}
        self.consistency = consistency if consistency is not None else HeadConsistencyLoss()
        self.consistency_weight = float(consistency_weight)
        self.consistency_warmup_epochs = float(consistency_warmup_epochs)
        first = {}
        for name, head in self.heads.items():
            first.setdefault(head.target_key, name)
        pair = (first.get("hard"), first.get("soft"))
        self.consistency_pair = pair if None not in pair else None
        terms = list(self.heads)
        if self.consistency_pair is not None and self.consistency_weight > 0:
            terms.append("consistency")
        self.balancer = build_balancer(balancing)
        aliases = {key: name for key, name in first.items() if key not in self.heads}
        self.balancer.setup(terms, aliases)

    def current_consistency_weight(self, epoch: float) -> float:
        if self.consistency_warmup_epochs <= 0:
            return self.consistency_weight
        return self.consistency_weight * min(1.0, epoch / self.consistency_warmup_epochs)

    def forward(
        self,
        outputs: Mapping[str, torch.Tensor],
        targets: Mapping[str, torch.Tensor],
        epoch: float = 0.0,
        strict: bool = True,
        present: Mapping[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return ``(total, {part name: value})``; parts are the heads' names and ``consistency``.

        With ``strict=False`` (validation), heads whose target the batch lacks are left out of
        the total instead of raising, e.g. a validation set without soft masks.
        ``present`` (``{target key: Bool[B]}``, the dataset's ``item["present"]`` collated)
        restricts each head's loss to the samples that have its target; a head with none in
        the batch adds a zero that keeps the graph (``out.sum() * 0``), never NaN.
        A ``targets[f"{key}_weight"]`` map (e.g. ``soft_weight``) is passed to the head's
        loss as ``weight`` (`SoftLabelLoss` takes one).
        """
        parts: dict[str, torch.Tensor] = {}
        active: list[str] = []
        weights = dict(self.weights)
        for name, head in self.heads.items():
            target = head.select_target(targets)
            if target is None:
                if not strict:
                    continue
                raise KeyError(
                    f"head {name!r} learns from targets[{head.target_key!r}] but the batch has "
                    f"{sorted(targets)}; for soft heads set soft_labels: true on the dataset"
                )
            mask = None if present is None else present.get(head.target_key)
            parts[name], has = self._head_loss(name, outputs[name], target, targets, mask)
            if has:
                active.append(name)
        if self.consistency_pair is not None and self.consistency_weight > 0:
            a, b = self.consistency_pair
            parts["consistency"] = self.consistency(outputs[a], outputs[b], self._labelled(targets))
            weights["consistency"] = self.current_consistency_weight(epoch)
            active.append("consistency")
        if not parts:
            return outputs[next(iter(outputs))].sum() * 0.0, parts
        return self.balancer.combine(parts, weights, active), parts

    def _head_loss(
        self,
        name: str,
        out: torch.Tensor,
        target: torch.Tensor,
        targets: Mapping[str, torch.Tensor],
        mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, bool]:
        """One head's loss on the samples ``mask`` marks present; ``(0 with grad, False)``
        when none is."""
        head = self.heads[name]
        weight = targets.get(f"{head.target_key}_weight")
        if mask is not None:
            mask = mask.to(device=out.device, dtype=torch.bool).reshape(-1)
            if not bool(mask.any()):
                return out.sum() * 0.0, False
            if not bool(mask.all()):
                out, target = out[mask], target[mask]
                weight = weight[mask] if weight is not None else None
        if weight is None:
            return self.losses[name](out, target), True
        return self.losses[name](out, target, weight=weight), True

    def _labelled(self, targets: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        if "hard" in targets:
            return targets["hard"] != self.ignore_index
        if "soft" in targets:
            return valid_soft_pixels(targets["soft"])
        return None
