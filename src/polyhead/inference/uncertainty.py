"""Per-pixel uncertainty from (blended) class probabilities ``[K, ...]``.

Both measures lie in ``[0, 1]``: 0 for a one-hot prediction, 1 for the uniform
distribution (normalised entropy) or, for ``1 - max p``, ``1 - 1/K`` at most.
Probabilities blended from overlapping tiles or averaged by TTA are the
predictive distribution, so their entropy is the *total* predictive uncertainty
(aleatoric plus the disagreement between tiles/augmentations).
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

from polyhead.errors import ConfigError, DataError

UNCERTAINTY_KINDS = ("entropy", "max_prob")
Array = TypeVar("Array", np.ndarray, torch.Tensor)


def _check_probs(probs: np.ndarray | torch.Tensor, axis: int) -> int:
    if probs.ndim < 1:
        raise DataError("probabilities need a class axis")
    k = int(probs.shape[axis])
    if k < 1:
        raise DataError("probabilities have no classes")
    return k


def predictive_entropy(probs: Array, axis: int = 0, normalize: bool = True) -> Array:
    """Entropy ``-sum p log p`` over the class ``axis``, divided by ``log K`` if ``normalize``.

    Accepts numpy arrays or torch tensors (returns the same kind, float32, with the
    class axis removed). ``0 log 0`` counts as 0. With one class the result is 0.
    """
    k = _check_probs(probs, axis)
    if isinstance(probs, torch.Tensor):
        p = probs.float()
        ent = -(p * torch.log(p.clamp_min(1e-30))).sum(dim=axis)
        ent = ent / float(np.log(k)) if normalize and k > 1 else ent
        return ent.clamp_min(0.0) if k > 1 else torch.zeros_like(ent)
    p = np.asarray(probs, dtype=np.float32)
    ent = -(p * np.log(np.maximum(p, np.float32(1e-30)))).sum(axis=axis, dtype=np.float32)
    if k == 1:
        return np.zeros_like(ent)
    if normalize:
        ent /= np.float32(np.log(k))
    return np.maximum(ent, 0.0, out=ent)


def max_prob_uncertainty(probs: Array, axis: int = 0) -> Array:
    """``1 - max_k p_k`` over the class ``axis`` (numpy or torch in, same kind out, float32)."""
    _check_probs(probs, axis)
    if isinstance(probs, torch.Tensor):
        return 1.0 - probs.float().amax(dim=axis)
    return (1.0 - np.asarray(probs, dtype=np.float32).max(axis=axis)).astype(np.float32)


def uncertainty_map(probs: Array, kind: str = "entropy", axis: int = 0) -> Array:
    """Per-pixel uncertainty: ``"entropy"`` (normalised by log K) or ``"max_prob"`` (1 - max p)."""
    if kind == "entropy":
        return predictive_entropy(probs, axis=axis, normalize=True)
    if kind == "max_prob":
        return max_prob_uncertainty(probs, axis=axis)
    raise ConfigError(f"uncertainty kind must be one of {UNCERTAINTY_KINDS}, got {kind!r}")
