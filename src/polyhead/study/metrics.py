"""Probabilistic segmentation metrics of the dual-head study, on flattened pixels.

Probabilities are ``[N, K]`` (rows sum to 1), references either class ids ``[N]`` or soft
distributions ``[N, K]``. Log terms floor the probabilities at ``EPS`` so that a confidently
wrong pixel costs ``-log(EPS)`` instead of ``inf``. ECE comes from
`polyhead.inference.calibration.reliability` (15 equal bins), boundary F1 from
`polyhead.inference.boundary_metrics`.
"""

from __future__ import annotations

import numpy as np
import torch

from polyhead.errors import DataError
from polyhead.inference.boundary_metrics import BoundaryF1
from polyhead.inference.calibration import reliability

EPS = 1e-12


def _check(probs: torch.Tensor, reference: torch.Tensor) -> None:
    if probs.ndim != 2:
        raise DataError(f"probabilities must be [N, K], got shape {tuple(probs.shape)}")
    if reference.shape[0] != probs.shape[0] or (
        reference.ndim == 2 and reference.shape != probs.shape
    ):
        raise DataError(
            f"reference {tuple(reference.shape)} does not match probabilities {tuple(probs.shape)}"
        )


def _as_distribution(reference: torch.Tensor, k: int) -> torch.Tensor:
    """Class ids ``[N]`` -> one-hot ``[N, K]``; a soft ``[N, K]`` is returned as float."""
    if reference.ndim == 1:
        return torch.nn.functional.one_hot(reference.long(), k).double()
    return reference.double()


def nll(probs: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean ``-sum_k q_k log p_k``: the negative log-likelihood of class ids, or the
    cross-entropy from soft references ``q``."""
    _check(probs, reference)
    q = _as_distribution(reference, probs.shape[1])
    return float(-(q * probs.double().clamp_min(EPS).log()).sum(1).mean())


def brier(probs: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean over pixels of ``sum_k (p_k - q_k)^2`` (``q`` one-hot for class ids; 0..2)."""
    _check(probs, reference)
    q = _as_distribution(reference, probs.shape[1])
    return float(((probs.double() - q) ** 2).sum(1).mean())


def kl_divergence(reference: torch.Tensor, probs: torch.Tensor) -> float:
    """Mean ``KL(q || p) = sum_k q_k (log q_k - log p_k)`` of soft references ``q``."""
    _check(probs, reference)
    q = reference.double()
    log_p = probs.double().clamp_min(EPS).log()
    return float((torch.special.xlogy(q, q) - q * log_p).sum(1).mean())


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
    """``[K, K]`` counts, rows the target class, columns the predicted one."""
    return torch.bincount(target.long() * k + pred.long(), minlength=k * k).view(k, k)


def miou(confusion: torch.Tensor) -> float:
    """Mean IoU over classes present in the target or the prediction."""
    confusion = confusion.double()
    tp = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - tp
    present = union > 0
    return float((tp[present] / union[present]).mean()) if present.any() else float("nan")


def evaluate(
    probs: torch.Tensor,
    reference: torch.Tensor,
    tolerance: float = 2.0,
) -> tuple[dict[str, float], torch.Tensor]:
    """Every study metric of scene probabilities ``[S, K, H, W]`` against a reference:
    class ids ``[S, H, W]`` (the truth) or soft masks ``[S, K, H, W]`` (class-id metrics then
    use their arg-max, and ``kl`` is added).

    Returns ``({miou, accuracy, ece, nll, brier, boundary_f1[, kl]}, reliability bins)``; the
    bins are ``[3, N_BINS]``: pixel count, summed confidence, summed correctness.
    """
    soft = reference.ndim == 4
    k = probs.shape[1]
    flat = probs.permute(0, 2, 3, 1).reshape(-1, k).float()
    labels_map = reference.argmax(1) if soft else reference.long()
    labels = labels_map.reshape(-1)
    ref_flat = reference.permute(0, 2, 3, 1).reshape(-1, k) if soft else labels
    pred_map = probs.argmax(1)
    conf = confusion_matrix(pred_map.reshape(-1), labels, k)
    rel = reliability(flat, labels)
    bf1 = BoundaryF1(tolerance=tolerance, ignore_index=None)
    for p, t in zip(pred_map.cpu().numpy(), labels_map.cpu().numpy(), strict=True):
        bf1.update(p, t)
    out = {
        "miou": miou(conf),
        "accuracy": float(conf.diag().sum() / conf.sum()),
        "ece": rel.ece,
        "nll": nll(flat, ref_flat),
        "brier": brier(flat, ref_flat),
        "boundary_f1": float(bf1.compute()["f1"]),
    }
    if soft:
        out["kl"] = kl_divergence(ref_flat, flat)
    return out, torch.stack([rel.count, rel.confidence * rel.count, rel.accuracy * rel.count])


def bins_to_curve(bins: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Summed bins ``[3, N_BINS]`` -> mean confidence, accuracy, count per bin, and the ECE."""
    count, conf_sum, acc_sum = (np.asarray(b, dtype=np.float64) for b in bins)
    safe = np.maximum(count, 1)
    ece = float(np.abs(conf_sum - acc_sum).sum() / max(count.sum(), 1))
    return conf_sum / safe, acc_sum / safe, count, ece
