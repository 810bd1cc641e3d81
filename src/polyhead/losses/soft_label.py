"""Losses against per-pixel class-probability targets (soft masks)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def valid_soft_pixels(target: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Pixels that carry a distribution: all-zero soft-mask pixels (padding, no label) do not."""
    return target.sum(dim=1) > threshold


def masked_pixel_mean(per_pixel: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of a ``[B, H, W]`` map over ``valid`` pixels (0 with grad when none is valid)."""
    valid = valid.to(per_pixel.dtype)
    return (per_pixel * valid).sum() / valid.sum().clamp_min(1.0)


class SoftLabelLoss(nn.Module):
    """Cross-entropy or KL divergence from soft targets ``[B, K, H, W]`` to logits.

    The value is summed over classes and averaged over labelled pixels (the "batchmean"
    convention per pixel, not an element mean that would divide by K). ``mode="kl"`` reports
    KL(target || prediction), which is 0 at a perfect fit; ``mode="ce"`` adds the targets'
    entropy (same gradient). With ``temperature`` T the logits are divided by T and the loss is
    multiplied by T**2 (Hinton et al.), keeping gradient scale comparable across T.

    ``weight`` (``[B, 1, H, W]`` or ``[B, H, W]``, e.g. the dataset's ``soft_weight`` extra
    target) scales each pixel's term by a confidence in [0, 1]; the sum is still divided by
    the number of labelled pixels, so low-confidence pixels count for less rather than the
    confident ones for more.
    """

    def __init__(self, mode: str = "kl", temperature: float = 1.0) -> None:
        super().__init__()
        if mode not in ("kl", "ce"):
            raise ValueError(f"mode must be 'kl' or 'ce', got {mode!r}")
        self.mode = mode
        self.temperature = float(temperature)

    def forward(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        valid: torch.Tensor | None = None,
        weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        t = self.temperature
        log_q = F.log_softmax(logits.float() / t, dim=1)
        target = target.float()
        per_pixel = -(target * log_q).sum(dim=1)
        if self.mode == "kl":
            per_pixel = per_pixel + torch.special.xlogy(target, target).sum(dim=1)
        if valid is None:
            valid = valid_soft_pixels(target)
        if weight is not None:
            weight = weight.float()
            weight = weight[:, 0] if weight.ndim == 4 else weight
            if weight.shape != per_pixel.shape:
                raise ValueError(
                    f"soft-label weight map {tuple(weight.shape)} does not match the target's "
                    f"pixels {tuple(per_pixel.shape)}"
                )
            per_pixel = per_pixel * weight
        return masked_pixel_mean(per_pixel, valid) * (t * t)
