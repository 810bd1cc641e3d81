"""Consistency between two heads' class distributions."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from polyhead.losses.soft_label import masked_pixel_mean


class HeadConsistencyLoss(nn.Module):
    """Divergence between the softmax distributions of two heads' logits, per pixel.

    ``kind="js"`` (default): Jensen-Shannon divergence, symmetric and bounded by log 2, so a
    head that is briefly very wrong cannot dominate the total loss. ``kind="symmetric_kl"``:
    (KL(p||q) + KL(q||p)) / 2. Summed over classes, averaged over pixels (optionally only
    ``valid`` ones). Gradients flow into both heads.
    """

    def __init__(self, kind: str = "js") -> None:
        super().__init__()
        if kind not in ("js", "symmetric_kl"):
            raise ValueError(f"kind must be 'js' or 'symmetric_kl', got {kind!r}")
        self.kind = kind

    def forward(
        self, logits_a: torch.Tensor, logits_b: torch.Tensor, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        log_p = F.log_softmax(logits_a.float(), dim=1)
        log_q = F.log_softmax(logits_b.float(), dim=1)
        p, q = log_p.exp(), log_q.exp()
        if self.kind == "symmetric_kl":
            per_pixel = 0.5 * ((p * (log_p - log_q)).sum(1) + (q * (log_q - log_p)).sum(1))
        else:
            log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
            per_pixel = 0.5 * ((p * (log_p - log_m)).sum(1) + (q * (log_q - log_m)).sum(1))
        if valid is None:
            return per_pixel.mean()
        return masked_pixel_mean(per_pixel, valid)
