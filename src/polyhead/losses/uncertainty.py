"""Uncertainty maps as a regression target: transforms, the inverse mapping, and the loss.

An uncertainty head predicts ``z ~ T(u)`` for an uncertainty map ``u`` (sqrt by default);
`to_uncertainty` maps its output back. Cached and live teacher targets stack their maps as
``[B, 3 + K, H, W]``: `UNCERTAINTY_BANDS`, then the per-class std (`uncertainty_channels`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from polyhead.errors import ConfigError
from polyhead.losses.soft_label import masked_pixel_mean

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


TRANSFORMS = ("sqrt", "log", "identity")
ACTIVATIONS = ("none", "sigmoid")


def forward_transform(u: torch.Tensor, transform: str, log_eps: float = 1e-3) -> torch.Tensor:
    """Uncertainty -> regression space: ``sqrt(u)``, ``log(u + eps)`` or ``u``."""
    u = u.float().clamp_min(0.0)
    if transform == "sqrt":
        return u.sqrt()
    if transform == "log":
        return torch.log(u + log_eps)
    if transform == "identity":
        return u
    raise ConfigError(f"transform must be one of {TRANSFORMS}, got {transform!r}")


def to_uncertainty(
    z: torch.Tensor, transform: str = "sqrt", activation: str = "none", log_eps: float = 1e-3
) -> torch.Tensor:
    """Head output -> uncertainty (>= 0): optional sigmoid, then the inverse transform."""
    if activation not in ACTIVATIONS:
        raise ConfigError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    z = torch.sigmoid(z.float()) if activation == "sigmoid" else z.float()
    if transform == "sqrt":
        return z.clamp_min(0.0).square()
    if transform == "log":
        return (torch.exp(z) - log_eps).clamp_min(0.0)
    if transform == "identity":
        return z.clamp_min(0.0)
    raise ConfigError(f"transform must be one of {TRANSFORMS}, got {transform!r}")


def target_variance(
    t: torch.Tensor, valid: torch.Tensor | None = None, min_variance: float = 1e-6
) -> torch.Tensor:
    """Variance of a (transformed) target ``[B, C, H, W]`` over its valid pixels (``valid``
    ``[B, H, W]``, default all), detached and floored at ``min_variance``: the divisor that
    makes a regression loss's size independent of how small the targets are."""
    sel = t.detach().movedim(1, -1)
    sel = sel[valid] if valid is not None else sel
    var = sel.var(unbiased=False) if sel.numel() > 1 else t.new_zeros(())
    return var.clamp_min(min_variance)


def check_target(name: str) -> str:
    if name not in UNCERTAINTY_TARGETS:
        raise ConfigError(
            f"uncertainty_target {name!r} unknown; valid: {list(UNCERTAINTY_TARGETS)}"
        )
    return name


def select_target(targets: Mapping[str, torch.Tensor], name: str, n_classes: int) -> torch.Tensor:
    """The ``name`` channels of ``targets["uncertainty"]``."""
    if "uncertainty" not in targets:
        raise ConfigError(
            "the batch has no 'uncertainty' target: read cached targets with "
            "extra_targets={uncertainty: uncertainty}, or give the task a live teacher"
        )
    return targets["uncertainty"][:, uncertainty_channels(name, n_classes)]


def check_channels(out: torch.Tensor, target: torch.Tensor, name: str) -> None:
    if out.shape[1] != target.shape[1]:
        raise ConfigError(
            f"the uncertainty head has {out.shape[1]} output channel(s); target {name!r} has "
            f"{target.shape[1]} (set the head's classes accordingly)"
        )


class UncertaintyRegressionLoss(nn.Module):
    """Regress an uncertainty map in a transformed space, without an output activation.

    The head predicts ``z ~ T(u)`` with ``T`` = ``sqrt`` (default), ``log(u + log_eps)`` or
    ``identity``; `to_uncertainty` maps back (clamped >= 0). The per-element loss (``mse`` or
    ``smooth_l1``) is averaged over channels and over labelled pixels. With ``normalize`` it is
    divided by the batch variance of ``T(u)`` over those pixels (detached, floored at
    ``min_variance``), so its size does not vanish when the targets are tiny.
    """

    def __init__(
        self,
        transform: str = "sqrt",
        loss: str = "mse",
        normalize: bool = True,
        log_eps: float = 1e-3,
        min_variance: float = 1e-6,
        beta: float = 0.1,
    ) -> None:
        super().__init__()
        if transform not in TRANSFORMS:
            raise ConfigError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
        if loss not in ("mse", "smooth_l1"):
            raise ConfigError(f"loss must be 'mse' or 'smooth_l1', got {loss!r}")
        self.transform, self.loss, self.normalize = transform, loss, bool(normalize)
        self.log_eps, self.min_variance, self.beta = float(log_eps), float(min_variance), beta
        self.activation = "none"

    def forward(
        self, z: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        t = forward_transform(target, self.transform, self.log_eps)
        z = z.float()
        if self.loss == "mse":
            per = (z - t).square()
        else:
            per = F.smooth_l1_loss(z, t, reduction="none", beta=self.beta)
        if valid is None:
            valid = torch.ones_like(per[:, 0], dtype=torch.bool)
        value = masked_pixel_mean(per.mean(dim=1), valid)
        if self.normalize:
            value = value / target_variance(t, valid, self.min_variance)
        return value
