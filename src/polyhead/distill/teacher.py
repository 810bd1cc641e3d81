"""Teachers for uncertainty distillation: an ensemble's mean prediction and its spread.

`EnsembleTeacher` runs M members (models returning class logits ``[B, K, H, W]``) one after
another and keeps streaming statistics (Welford's mean and variance of the softmax
probabilities, the running mean of the members' entropies), so memory does not grow with M.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from polyhead.errors import ConfigError

log = logging.getLogger(__name__)

#: order of the bands of an uncertainty target; ``std_per_class`` follows with K bands
UNCERTAINTY_BANDS = ("std_winning", "entropy", "mutual_information")
UNCERTAINTY_TARGETS = (*UNCERTAINTY_BANDS, "std_per_class")


def uncertainty_channels(name: str, n_classes: int) -> slice:
    """Channels of target ``name`` inside a stacked uncertainty tensor ``[B, 3 + K, H, W]``."""
    if name in UNCERTAINTY_BANDS:
        i = UNCERTAINTY_BANDS.index(name)
        return slice(i, i + 1)
    if name == "std_per_class":
        return slice(len(UNCERTAINTY_BANDS), len(UNCERTAINTY_BANDS) + n_classes)
    raise ConfigError(f"uncertainty target {name!r} unknown; valid: {list(UNCERTAINTY_TARGETS)}")


def band_names(n_classes: int) -> list[str]:
    """Band descriptions of an uncertainty raster: the three maps, then ``std_class_k``."""
    return [*UNCERTAINTY_BANDS, *(f"std_class_{k}" for k in range(n_classes))]


def stack_uncertainty(stats: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[B, 3 + K, H, W]``: std_winning, entropy, mutual_information, std_per_class."""
    return torch.cat([*(stats[k] for k in UNCERTAINTY_BANDS), stats["std_per_class"]], dim=1)


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -torch.special.xlogy(p, p).sum(dim=1, keepdim=True)


def _logits(out: Any) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise ConfigError(
            "a teacher member must return a logits tensor [B, K, H, W]; wrap multi-head "
            "models with polyhead.inference.predict.SelectedHead"
        )
    return out


class _Flipped(nn.Module):
    """``model`` applied to a flipped input, its output flipped back."""

    def __init__(self, model: nn.Module, dims: tuple[int, ...]) -> None:
        super().__init__()
        self.model, self.dims = model, dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.dims:
            return _logits(self.model(x))
        return _logits(self.model(x.flip(self.dims))).flip(self.dims)


def _dropout_layers(model: nn.Module) -> list[nn.Module]:
    return [
        m
        for m in model.modules()
        if (isinstance(m, nn.modules.dropout._DropoutNd) or type(m).__name__ == "DropPath")
        and float(getattr(m, "p", getattr(m, "drop_prob", 0.0)) or 0.0) > 0.0
    ]


class _MCDropout(nn.Module):
    """``model`` in eval mode except its dropout layers, which sample on every call."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.dropout = _dropout_layers(model)
        if not self.dropout:
            raise ConfigError(
                f"mc_dropout: {type(model).__name__} has no dropout layer with p > 0; use "
                "flip_tta or an ensemble of checkpoints instead"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.dropout:
            layer.train()
        return _logits(self.model(x))


def _selected(model: nn.Module, head: str | None) -> nn.Module:
    from polyhead.inference.predict import SelectedHead
    from polyhead.models.multihead import MultiHeadSegmentationModel

    if isinstance(model, MultiHeadSegmentationModel):
        return SelectedHead(model, head)
    return model


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
        self.members = nn.ModuleList(members)
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
            p = torch.softmax(_logits(member(x)).float(), dim=1)
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
    def from_checkpoints(
        cls,
        paths: Sequence[str | Path],
        head: str | None = None,
        overrides: Sequence[str] = (),
        ddof: int = 1,
    ) -> EnsembleTeacher:
        """Members loaded with `polyhead.checkpoint.load_model` (multi-head: ``head`` or their
        inference head). Their validation ``Normalize`` steps must agree; it becomes
        ``normalize``."""
        from polyhead.checkpoint import load_model
        from polyhead.inference.predict import inference_normalization

        if len(paths) < 2:
            raise ConfigError(
                f"an ensemble teacher needs at least 2 checkpoints, got {len(paths)}; with one "
                "checkpoint use flip_tta or mc_dropout"
            )
        members, norms = [], []
        for path in paths:
            model, cfg = load_model(path, overrides)
            members.append(_selected(model, head))
            norms.append(inference_normalization(cfg))
        reprs = {repr(n) for n in norms}
        if len(reprs) > 1:
            raise ConfigError(
                "teacher checkpoints were trained with different input normalisation; "
                f"found {sorted(reprs)}"
            )
        return cls(members, ddof=ddof, normalize=norms[0])

    @classmethod
    def flip_tta(
        cls, model: nn.Module, head: str | None = None, normalize: Any = None, ddof: int = 1
    ) -> EnsembleTeacher:
        """Members: ``model`` under no flip, horizontal, vertical and both flips."""
        base = _selected(model, head)
        dims = [(), (-1,), (-2,), (-2, -1)]
        return cls([_Flipped(base, d) for d in dims], ddof=ddof, normalize=normalize)

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
        member = _MCDropout(_selected(model, head))
        return cls([member] * n_samples, ddof=ddof, normalize=normalize)
