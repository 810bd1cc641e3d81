"""Agreement between a predicted and a target uncertainty map: Pearson, Spearman, means and
spatial spreads (a head collapsed to a constant has ``std_pred`` near 0)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import rankdata
from torchmetrics import Metric


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two flat arrays (nan when either is constant)."""
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    x, y = x - x.mean(), y - y.mean()
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denom) if denom > 0 else float("nan")


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (ties get average ranks)."""
    return pearson(rankdata(np.ravel(x)), rankdata(np.ravel(y)))


class UncertaintyAgreement(Metric):
    """Streaming agreement of ``pred`` and ``target`` uncertainty over labelled pixels.

    Pearson and the means use every pixel (float64 sums); Spearman needs ranks, so it uses a
    random subsample of at most ``samples_per_update`` pixels per update and ``max_samples`` in
    all (a fixed-seed generator keeps validation reproducible).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(
        self, samples_per_update: int = 4096, max_samples: int = 200_000, seed: int = 0
    ) -> None:
        super().__init__()
        self.samples_per_update, self.max_samples, self.seed = samples_per_update, max_samples, seed
        for name in ("n", "sx", "sy", "sxx", "syy", "sxy"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sample_pred", [], dist_reduce_fx="cat")
        self.add_state("sample_target", [], dist_reduce_fx="cat")
        self._generator = torch.Generator().manual_seed(seed)
        self._kept = 0

    def update(
        self, pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
    ) -> None:
        """``pred``/``target`` of equal shape; ``valid`` a boolean mask of that shape (or of
        its shape without the channel axis, broadcast)."""
        pred, target = pred.detach().double(), target.detach().double()
        if valid is not None:
            valid = valid.unsqueeze(1).expand_as(pred) if valid.ndim == pred.ndim - 1 else valid
            pred, target = pred[valid], target[valid]
        x, y = pred.flatten(), target.flatten()
        self.n += x.numel()
        self.sx += x.sum()
        self.sy += y.sum()
        self.sxx += (x * x).sum()
        self.syy += (y * y).sum()
        self.sxy += (x * y).sum()
        room = min(self.samples_per_update, self.max_samples - self._kept, x.numel())
        if room > 0:
            idx = torch.randperm(x.numel(), generator=self._generator)[:room].to(x.device)
            self.sample_pred.append(x[idx].float())
            self.sample_target.append(y[idx].float())
            self._kept += room

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.n.clamp_min(1.0)
        mx, my = self.sx / n, self.sy / n
        cov = self.sxy / n - mx * my
        vx, vy = (self.sxx / n - mx * mx).clamp_min(0), (self.syy / n - my * my).clamp_min(0)
        denom = (vx * vy).sqrt()
        r = cov / denom if denom > 0 else torch.tensor(float("nan"), dtype=torch.float64)
        rho = float("nan")
        if self.sample_pred:
            xs = _cat(self.sample_pred).cpu().numpy()
            ys = _cat(self.sample_target).cpu().numpy()
            rho = spearman(xs, ys)
        return {
            "pearson": r.float(),
            "spearman": torch.tensor(rho, dtype=torch.float32),
            "mean_pred": mx.float(),
            "mean_target": my.float(),
            "std_pred": vx.sqrt().float(),
            "std_target": vy.sqrt().float(),
        }

    def reset(self) -> None:
        super().reset()
        self._generator.manual_seed(self.seed)
        self._kept = 0


def _cat(value: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    return torch.cat(value) if isinstance(value, list) else value
