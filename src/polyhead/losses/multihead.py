"""Route each head's output to its target and loss; add the consistency term."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from polyhead.losses.consistency import HeadConsistencyLoss
from polyhead.losses.hard_label import ensure_ignore_index
from polyhead.losses.soft_label import SoftLabelLoss, valid_soft_pixels

#: target key in the batch's ``targets`` dict that each head role learns from
ROLE_TARGET = {"hard": "hard", "soft": "soft", "uncertainty": "uncertainty"}


class MultiHeadLoss(nn.Module):
    """Total loss of a multi-head model plus its named parts.

    Args:
        head_roles: ``{head name: role}`` (hard, soft) as reported by the model.
        hard_loss: loss for hard-role heads, ``loss(logits, mask[B,H,W])``.
        soft_loss: loss for soft-role heads, ``loss(logits, probs[B,K,H,W])``.
        weights: per-head weights (default 1).
        consistency: divergence between the first hard and first soft head (None: off).
        consistency_weight: its weight once warmed up (default 0.1).
        consistency_warmup_epochs: linear ramp of the weight from 0 over these epochs, so
            each head first learns its own target before they are pulled together.
        ignore_index: hard-mask value that marks unlabelled pixels.
    """

    def __init__(
        self,
        head_roles: Mapping[str, str],
        hard_loss: nn.Module | None = None,
        soft_loss: nn.Module | None = None,
        weights: Mapping[str, float] | None = None,
        consistency: nn.Module | None = None,
        consistency_weight: float = 0.1,
        consistency_warmup_epochs: float = 1.0,
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        self.head_roles = dict(head_roles)
        self.ignore_index = ignore_index
        hard_loss = hard_loss if hard_loss is not None else nn.CrossEntropyLoss()
        self.hard_loss = ensure_ignore_index(hard_loss, ignore_index)
        self.soft_loss = soft_loss if soft_loss is not None else SoftLabelLoss()
        self.weights = {name: float((weights or {}).get(name, 1.0)) for name in self.head_roles}
        self.consistency = consistency if consistency is not None else HeadConsistencyLoss()
        self.consistency_weight = float(consistency_weight)
        self.consistency_warmup_epochs = float(consistency_warmup_epochs)
        hard = [n for n, r in self.head_roles.items() if r == "hard"]
        soft = [n for n, r in self.head_roles.items() if r == "soft"]
        self.consistency_pair = (hard[0], soft[0]) if hard and soft else None

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
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return ``(total, {part name: value})``; parts are the heads' names and ``consistency``.

        With ``strict=False`` (validation), heads whose target the batch lacks are left out of
        the total instead of raising, e.g. a validation set without soft masks.
        """
        parts: dict[str, torch.Tensor] = {}
        total = outputs[next(iter(outputs))].new_zeros(())
        for name, role in self.head_roles.items():
            key = ROLE_TARGET[role]
            if key not in targets:
                if not strict:
                    continue
                raise KeyError(
                    f"head {name!r} ({role} role) needs targets[{key!r}] but the batch has "
                    f"{sorted(targets)}; for soft heads set soft_labels: true on the dataset"
                )
            loss_fn = self.hard_loss if role == "hard" else self.soft_loss
            parts[name] = loss_fn(outputs[name], targets[key])
            total = total + self.weights[name] * parts[name]
        if self.consistency_pair is not None and self.consistency_weight > 0:
            a, b = self.consistency_pair
            valid = self._labelled(targets)
            parts["consistency"] = self.consistency(outputs[a], outputs[b], valid)
            total = total + self.current_consistency_weight(epoch) * parts["consistency"]
        return total, parts

    def _labelled(self, targets: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        if "hard" in targets:
            return targets["hard"] != self.ignore_index
        if "soft" in targets:
            return valid_soft_pixels(targets["soft"])
        return None
