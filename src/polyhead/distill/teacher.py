"""Teachers for uncertainty distillation: an ensemble's mean prediction and its spread.

`EnsembleTeacher` runs M members (predictors, or networks returning class logits, which it
wraps in a `polyhead.inference.Predictor`) one after
another and keeps streaming statistics (Welford's mean and variance of the softmax
probabilities, the running mean of the members' entropies), so memory does not grow with M.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from polyhead.errors import ConfigError
from polyhead.inference.predictor import PROBABILITIES, Predictor
from polyhead.inference.tta import ALL_FLIPS, dropout_layers
from polyhead.losses.uncertainty import (
    UNCERTAINTY_BANDS,
)

log = logging.getLogger(__name__)


def band_names(n_classes: int) -> list[str]:
    """Band descriptions of an uncertainty raster: the three maps, then ``std_class_k``."""
    return [*UNCERTAINTY_BANDS, *(f"std_class_{k}" for k in range(n_classes))]


def stack_uncertainty(stats: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[B, 3 + K, H, W]``: std_winning, entropy, mutual_information, std_per_class."""
    return torch.cat([*(stats[k] for k in UNCERTAINTY_BANDS), stats["std_per_class"]], dim=1)


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -torch.special.xlogy(p, p).sum(dim=1, keepdim=True)


def _as_member(member: nn.Module) -> nn.Module:
    """A member returning ``{"probabilities": ...}``: a `Predictor` of the network unless it is
    one (or an MC-dropout wrapper of one) already."""
    return member if isinstance(member, Predictor | _MCDropout) else Predictor(member)


class _MCDropout(nn.Module):
    """A predictor in eval mode except its model's dropout layers, which sample on every call."""

    def __init__(self, model: Predictor) -> None:
        super().__init__()
        self.model = model
        self.dropout = dropout_layers(model)
        if not self.dropout:
            raise ConfigError(
                f"mc_dropout: {type(model).__name__} has no dropout layer with p > 0; use "
                "flip_tta or an ensemble of checkpoints instead"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.dropout:
            layer.train()
        return self.model(x)


class EnsembleTeacher(nn.Module):
    """Mean class probabilities of M members and the per-pixel uncertainty around them.

    ``forward(x)`` returns float32 maps: ``probs`` ``[B, K, H, W]`` (mean softmax),
    ``std_per_class`` (std over members of each class's probability, ``ddof`` = 1 as
    ``torch.std``), ``std_winning`` ``[B, 1, H, W]`` (that std at the mean's arg-max class),
    ``entropy`` (predictive entropy of the mean, nats) and ``mutual_information`` (entropy of
    the mean minus the members' mean entropy, nats, >= 0).

    The teacher always stays in eval mode (``train()`` is a no-op), its parameters are frozen,
    and ``normalize`` (optional) records the input normalisation the members were trained with.
    """

    def __init__(self, members: Sequence[nn.Module], ddof: int = 1, normalize: Any = None) -> None:
        super().__init__()
        if len(members) < 2:
            raise ConfigError(f"an ensemble teacher needs at least 2 members, got {len(members)}")
        if ddof not in (0, 1):
            raise ConfigError(f"ddof must be 0 or 1, got {ddof}")
        self.members = nn.ModuleList(_as_member(m) for m in members)
        self.ddof = ddof
        self.normalize = normalize
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> EnsembleTeacher:
        """Keep eval mode (batch norm statistics frozen); MC-dropout members sample anyway."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        mean = m2 = mean_entropy = None
        for i, member in enumerate(self.members, start=1):
            p = member(x)[PROBABILITIES].float()
            if mean is None:
                mean, m2, mean_entropy = p.clone(), torch.zeros_like(p), _entropy(p)
                continue
            if p.shape != mean.shape:
                raise ConfigError(
                    f"teacher member {i - 1} returned shape {list(p.shape)}, member 0 "
                    f"{list(mean.shape)}: members must predict the same classes"
                )
            delta = p - mean
            mean += delta / i
            m2 += delta * (p - mean)
            mean_entropy += (_entropy(p) - mean_entropy) / i
        assert mean is not None and m2 is not None and mean_entropy is not None
        std = (m2 / (len(self.members) - self.ddof)).clamp_min(0.0).sqrt()
        entropy = _entropy(mean)
        winner = mean.argmax(dim=1, keepdim=True)
        return {
            "probs": mean,
            "std_winning": std.gather(1, winner),
            "entropy": entropy,
            "mutual_information": (entropy - mean_entropy).clamp_min(0.0),
            "std_per_class": std,
        }

    @classmethod
    def flip_tta(
        cls, model: nn.Module, head: str | None = None, normalize: Any = None, ddof: int = 1
    ) -> EnsembleTeacher:
        """Members: ``model`` under no flip, horizontal, vertical and both flips."""
        members = [Predictor(model, head, tta={"flips": (flip,)}) for flip in ALL_FLIPS]
        return cls(members, ddof=ddof, normalize=normalize)

    @classmethod
    def mc_dropout(
        cls,
        model: nn.Module,
        n_samples: int = 8,
        head: str | None = None,
        normalize: Any = None,
        ddof: int = 1,
    ) -> EnsembleTeacher:
        """Members: ``n_samples`` passes of ``model`` with its dropout layers active.

        Raises ``ConfigError`` when the model has no dropout layer (p > 0).
        """
        if n_samples < 2:
            raise ConfigError(f"mc_dropout needs n_samples >= 2, got {n_samples}")
        member = _MCDropout(Predictor(model, head))
        return cls([member] * n_samples, ddof=ddof, normalize=normalize)
