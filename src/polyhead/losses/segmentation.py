"""Multiclass segmentation losses on logits ``[B, K, H, W]``.

Every loss takes an integer mask ``[B, H, W]`` whose ``ignore_index`` pixels do not contribute
(and get zero gradient). Cross-entropy, Dice, Tversky and Focal also take a soft mask: per-class
probabilities ``[B, K, H, W]``; soft pixels whose probabilities sum to less than 0.5 (all-zero
padding) are ignored. With one-hot soft masks each loss equals its hard-mask value.

Defaults follow ``segmentation_models_pytorch.losses`` (multiclass mode) and torch, so the values
are equal on the same inputs; the differences are listed in each class's docstring.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from polyhead.errors import ConfigError
from polyhead.losses.soft_label import valid_soft_pixels

REDUCTIONS = ("mean", "sum", "none")


def _weights_tensor(weights: Sequence[float] | torch.Tensor | None) -> torch.Tensor | None:
    if weights is None:
        return None
    if torch.is_tensor(weights):
        return weights.detach().float().clone()
    return torch.tensor([float(w) for w in weights], dtype=torch.float32)  # also a Hydra ListConfig


def _check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ConfigError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def is_soft_target(logits: torch.Tensor, target: torch.Tensor) -> bool:
    """True when ``target`` is a probability mask shaped like ``logits``."""
    return target.dim() == logits.dim() and target.is_floating_point()


def target_distribution(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(dist [B,K,H,W] float, valid [B,H,W] bool)`` for a hard or soft target.

    Hard masks become one-hot; ignored pixels (and soft pixels without a distribution) are
    zero in ``dist`` and False in ``valid``.
    """
    if is_soft_target(logits, target):
        if target.shape != logits.shape:
            raise ValueError(
                f"soft target shape {tuple(target.shape)} != logits {tuple(logits.shape)}"
            )
        valid = valid_soft_pixels(target)
        return target.float() * valid.unsqueeze(1), valid
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}"
        )
    target = target.long()
    valid = (
        target != ignore_index
        if ignore_index is not None
        else torch.ones_like(target, dtype=torch.bool)
    )
    labels = torch.where(valid, target, torch.zeros_like(target))
    dist = F.one_hot(labels, logits.shape[1]).movedim(-1, 1).float()
    return dist * valid.unsqueeze(1), valid


def _reduce(per_pixel: torch.Tensor, denominator: torch.Tensor, reduction: str) -> torch.Tensor:
    """``mean``: sum over pixels / sum of their weights (0 when nothing is labelled)."""
    if reduction == "none":
        return per_pixel
    total = per_pixel.sum()
    if reduction == "sum":
        return total
    denom = denominator.sum()
    return torch.where(denom > 0, total / denom.clamp_min(1e-12), total * 0.0)


class CrossEntropyLoss(nn.Module):
    """Cross-entropy with class weights, label smoothing and ``ignore_index``.

    Hard masks: exactly ``F.cross_entropy`` (same weighted-mean convention: divided by the summed
    weights of the labelled pixels), except that a batch without labelled pixels gives 0 instead
    of NaN. Soft masks: ``-sum_k w_k t_k log p_k`` per pixel, label smoothing applied to the
    target (``t (1 - s) + s / K``), divided by ``sum_k w_k t_k`` summed over labelled pixels.

    SMP's ``SoftCrossEntropyLoss(smooth_factor=s)`` gives the same value when no pixel is
    ignored; with ignored pixels SMP divides by all pixels, this loss by the labelled ones.
    """

    def __init__(
        self,
        weight: Sequence[float] | torch.Tensor | None = None,
        ignore_index: int | None = 255,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.register_buffer("weight", _weights_tensor(weight), persistent=False)
        self.ignore_index = ignore_index
        self.label_smoothing = float(label_smoothing)
        self.reduction = _check_reduction(reduction)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.to(logits.device, torch.float32)
        logits = logits.float()
        if not is_soft_target(logits, target):
            ignore = -100 if self.ignore_index is None else self.ignore_index
            per_pixel = F.cross_entropy(
                logits,
                target.long(),
                weight=weight,
                ignore_index=ignore,
                label_smoothing=self.label_smoothing,
                reduction="none",
            )
            valid = target != ignore
            w_pix = (
                weight[torch.where(valid, target, 0).long()]
                if weight is not None
                else valid.float()
            )
            return _reduce(per_pixel, w_pix * valid, self.reduction)
        dist, valid = target_distribution(logits, target, self.ignore_index)
        k = logits.shape[1]
        smoothed = dist * (1.0 - self.label_smoothing) + self.label_smoothing / k * valid.unsqueeze(
            1
        )
        w = weight.view(1, k, 1, 1) if weight is not None else logits.new_ones(1, k, 1, 1)
        per_pixel = -(w * smoothed * F.log_softmax(logits, dim=1)).sum(1)
        return _reduce(per_pixel, (w * dist).sum(1), self.reduction)


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017), ``-(1 - p)^gamma log p``.

    ``mode="softmax"`` (default): on the softmax distribution, per pixel
    ``-sum_k w_k t_k (1 - p_k)^gamma log p_k``; the mean divides by the summed weights of the
    labelled pixels, like :class:`CrossEntropyLoss` (``gamma=0`` gives cross-entropy).
    ``mode="sigmoid"``: SMP's multiclass focal loss, one-vs-rest binary focal loss per class on
    sigmoid(logits) with optional ``alpha`` balance, averaged over labelled pixels per class and
    then over classes (``class_weights``: weighted class mean); equal to
    ``smp.losses.FocalLoss("multiclass", ...)``. ``reduction="none"`` returns per-pixel values.
    """

    def __init__(
        self,
        gamma: float = 2.0,
        mode: str = "softmax",
        alpha: float | None = None,
        class_weights: Sequence[float] | torch.Tensor | None = None,
        ignore_index: int | None = 255,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if mode not in ("softmax", "sigmoid"):
            raise ConfigError(f"FocalLoss mode must be 'softmax' or 'sigmoid', got {mode!r}")
        if alpha is not None and mode == "softmax":
            raise ConfigError(
                "FocalLoss alpha applies to mode='sigmoid'; use class_weights for softmax"
            )
        self.gamma = float(gamma)
        self.mode = mode
        self.alpha = alpha
        self.register_buffer("class_weights", _weights_tensor(class_weights), persistent=False)
        self.ignore_index = ignore_index
        self.reduction = _check_reduction(reduction)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        dist, valid = target_distribution(logits, target, self.ignore_index)
        k = logits.shape[1]
        w = (
            logits.new_ones(k)
            if self.class_weights is None
            else self.class_weights.to(logits.device)
        )
        w = w.view(1, k, 1, 1)
        if self.mode == "softmax":
            log_p = F.log_softmax(logits, dim=1)
            focal = (1.0 - log_p.exp()).pow(self.gamma)
            per_pixel = -(w * dist * focal * log_p).sum(1)
            return _reduce(per_pixel, (w * dist).sum(1), self.reduction)
        # one-vs-rest: every class of every labelled pixel is a binary problem
        bce = F.binary_cross_entropy_with_logits(logits, dist, reduction="none")
        per_elem = (1.0 - torch.exp(-bce)).pow(self.gamma) * bce
        if self.alpha is not None:
            per_elem = per_elem * (self.alpha * dist + (1.0 - self.alpha) * (1.0 - dist))
        per_pixel = (w * per_elem).sum(1) / w.sum() * valid
        return _reduce(per_pixel, valid.float(), self.reduction)


class _OverlapLoss(nn.Module):
    """Shared Dice/Tversky computation (per class over the whole batch, as in SMP)."""

    def __init__(
        self,
        alpha: float,
        beta: float,
        gamma: float = 1.0,
        smooth: float = 0.0,
        eps: float = 1e-7,
        log_loss: bool = False,
        class_weights: Sequence[float] | torch.Tensor | None = None,
        ignore_index: int | None = 255,
    ) -> None:
        super().__init__()
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)
        self.smooth, self.eps, self.log_loss = float(smooth), float(eps), bool(log_loss)
        self.register_buffer("class_weights", _weights_tensor(class_weights), persistent=False)
        self.ignore_index = ignore_index

    def per_class(
        self, logits: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(loss per class [K], class present in target [K])``."""
        dist, valid = target_distribution(logits.float(), target, self.ignore_index)
        probs = F.softmax(logits.float(), dim=1) * valid.unsqueeze(1)
        dims = (0, 2, 3)
        p_sum, t_sum = probs.sum(dims), dist.sum(dims)
        # TP as (|p| + |t| - |p - t|) / 2 = sum min(p, t): equals sum p*t for one-hot targets and
        # is minimised at p = t for soft targets (Wang et al. 2023, "Dice semimetric losses")
        tp = (p_sum + t_sum - (probs - dist).abs().sum(dims)) / 2
        fp, fn = p_sum - tp, t_sum - tp
        score = (tp + self.smooth) / (
            tp + self.alpha * fp + self.beta * fn + self.smooth
        ).clamp_min(self.eps)
        loss = -torch.log(score.clamp_min(self.eps)) if self.log_loss else 1.0 - score
        present = t_sum > 0
        return loss * present, present

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss, _ = self.per_class(logits, target)
        if self.class_weights is not None:
            w = self.class_weights.to(loss.device)
            agg = (loss * w).sum() / w.sum()
        else:
            agg = loss.mean()
        return agg**self.gamma if self.gamma != 1.0 else agg


class DiceLoss(_OverlapLoss):
    """Soft Dice loss ``1 - 2TP / (2TP + FP + FN)`` per class, averaged over classes.

    Equal to ``smp.losses.DiceLoss("multiclass", ignore_index=...)`` with the same ``smooth``,
    ``eps``, ``log_loss`` and ``class_weights``: statistics are summed over the whole batch,
    classes absent from the target contribute 0 but still count in the mean. Soft masks
    (probabilities) are accepted, which makes this also the soft Dice loss.
    """

    def __init__(
        self,
        smooth: float = 0.0,
        eps: float = 1e-7,
        log_loss: bool = False,
        class_weights: Sequence[float] | torch.Tensor | None = None,
        ignore_index: int | None = 255,
    ) -> None:
        super().__init__(0.5, 0.5, 1.0, smooth, eps, log_loss, class_weights, ignore_index)


class TverskyLoss(_OverlapLoss):
    """Tversky loss ``1 - TP / (TP + alpha FP + beta FN)``; the class mean is raised to ``gamma``.

    ``alpha`` weighs false positives, ``beta`` false negatives (0.5/0.5 is Dice). Equal to
    ``smp.losses.TverskyLoss("multiclass", ...)`` with the same arguments, including SMP's
    convention of applying ``gamma`` to the class mean (not per class).
    """

    def __init__(
        self,
        alpha: float = 0.5,
        beta: float = 0.5,
        gamma: float = 1.0,
        smooth: float = 0.0,
        eps: float = 1e-7,
        log_loss: bool = False,
        class_weights: Sequence[float] | torch.Tensor | None = None,
        ignore_index: int | None = 255,
    ) -> None:
        super().__init__(alpha, beta, gamma, smooth, eps, log_loss, class_weights, ignore_index)


def _lovasz_softmax_flat(
    probs: torch.Tensor, labels: torch.Tensor, classes: str | Sequence[int]
) -> torch.Tensor:
    """Lovász-softmax of ``probs [P, K]`` against ``labels [P]``, all classes at once."""
    if probs.shape[0] == 0:
        return probs.sum() * 0.0
    fg = F.one_hot(labels, probs.shape[1]).to(probs.dtype)
    errors, order = (fg - probs).abs().sort(dim=0, descending=True)
    fg_sorted = fg.gather(0, order)
    gts = fg_sorted.sum(0)
    jaccard = 1.0 - (gts - fg_sorted.cumsum(0)) / (gts + (1.0 - fg_sorted).cumsum(0))
    grad = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]], dim=0)
    per_class = (errors * grad).sum(0)
    if classes == "present":
        present = (gts > 0).to(per_class.dtype)
        return (per_class * present).sum() / present.sum().clamp_min(1.0)
    if classes == "all":
        return per_class.mean()
    return per_class[list(classes)].mean()


class LovaszSoftmaxLoss(nn.Module):
    """Lovász-softmax loss (Berman et al. 2018), a convex surrogate of the per-class Jaccard loss.

    Equal to ``smp.losses.LovaszLoss("multiclass", per_image=..., ignore_index=...)``: classes
    ``"present"`` in the target are averaged (or ``"all"`` / a list of class ids); with
    ``per_image`` the loss is computed per image and averaged over images. Hard masks only.
    """

    def __init__(
        self,
        per_image: bool = False,
        classes: str | Sequence[int] = "present",
        ignore_index: int | None = 255,
    ) -> None:
        super().__init__()
        if isinstance(classes, str) and classes not in ("present", "all"):
            raise ConfigError(f"classes must be 'present', 'all' or a list of ids, got {classes!r}")
        self.per_image = per_image
        self.classes = classes
        self.ignore_index = ignore_index

    def _flat(self, probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = probs.movedim(1, -1).reshape(-1, probs.shape[1])
        labels = target.reshape(-1).long()
        if self.ignore_index is not None:
            keep = labels != self.ignore_index
            probs, labels = probs[keep], labels[keep]
        return _lovasz_softmax_flat(probs, labels, self.classes)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if is_soft_target(logits, target):
            raise ValueError("LovaszSoftmaxLoss needs an integer mask [B, H, W], not probabilities")
        probs = F.softmax(logits.float(), dim=1)
        if not self.per_image:
            return self._flat(probs, target)
        return torch.stack(
            [self._flat(p[None], t[None]) for p, t in zip(probs, target, strict=True)]
        ).mean()
