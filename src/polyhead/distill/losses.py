"""Distillation losses: KL to the teacher's mean, optional CE, and uncertainty regression.

`DistillationLoss` is polyhead's default. `ThreadRecipeLoss` reproduces the forum thread's
recipe (sigmoid uncertainty head, element-mean MSE on per-class std, element-mean KL, float16
targets) with switches to remove one ingredient at a time, for the ablation in
``docs/uncertainty-distillation.md``.

Both take ``(seg_logits [B, K, H, W], unc_out [B, C, H, W], targets)`` where ``targets``
holds ``soft`` (teacher mean probabilities), ``uncertainty`` (``[B, 3 + K, H, W]``, bands as
`polyhead.losses.uncertainty.UNCERTAINTY_BANDS` then per-class std) and optionally ``hard``;
they return ``(total, {part: value})`` and name the ``transform``, ``activation`` and
``uncertainty_target`` they regress in, which the student's uncertainty head must share (the
head maps its output back: `polyhead.models.UncertaintyHead.activate`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from polyhead.errors import ConfigError
from polyhead.losses.soft_label import SoftLabelLoss, valid_soft_pixels
from polyhead.losses.uncertainty import (
    TRANSFORMS,
    UncertaintyRegressionLoss,
    check_channels,
    check_target,
    forward_transform,
    select_target,
    target_variance,
)


class DistillationLoss(nn.Module):
    """``kl_weight * KL(teacher || student) + ce_weight * CE + uncertainty_weight * U``.

    The KL is per pixel (summed over classes, averaged over labelled pixels, times T^2:
    `polyhead.losses.SoftLabelLoss`), i.e. torch's ``batchmean`` divided by H x W, not the
    element mean that shrinks it by K. CE (only computed when ``ce_weight > 0``) uses the hard
    mask with ``ignore_index``. ``U`` is ``uncertainty`` (default
    `UncertaintyRegressionLoss`) on the ``uncertainty_target`` channels: ``entropy`` (the
    ensemble's predictive entropy, default), ``std_winning``, ``mutual_information`` or
    ``std_per_class`` (the uncertainty head then needs K channels).
    """

    def __init__(
        self,
        kl_weight: float = 1.0,
        temperature: float = 1.0,
        ce_weight: float = 0.0,
        uncertainty_weight: float = 1.0,
        uncertainty: UncertaintyRegressionLoss | None = None,
        uncertainty_target: str = "entropy",
        ignore_index: int | None = None,
    ) -> None:
        super().__init__()
        self.kl_weight, self.ce_weight = float(kl_weight), float(ce_weight)
        self.uncertainty_weight = float(uncertainty_weight)
        self.kl = SoftLabelLoss(mode="kl", temperature=temperature)
        self.uncertainty = uncertainty if uncertainty is not None else UncertaintyRegressionLoss()
        self.uncertainty_target = check_target(uncertainty_target)
        self.ignore_index = ignore_index

    @property
    def transform(self) -> str:
        return self.uncertainty.transform

    @property
    def activation(self) -> str:
        return "none"

    def forward(
        self, seg_logits: torch.Tensor, unc_out: torch.Tensor, targets: Mapping[str, Any]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        soft = targets["soft"].float()
        valid = valid_soft_pixels(soft)
        parts = {"kl": self.kl(seg_logits, soft, valid)}
        if self.ce_weight > 0:
            ignore = self.ignore_index if self.ignore_index is not None else 255
            parts["ce"] = F.cross_entropy(seg_logits.float(), targets["hard"], ignore_index=ignore)
        target = select_target(targets, self.uncertainty_target, soft.shape[1])
        check_channels(unc_out, target, self.uncertainty_target)
        parts["uncertainty"] = self.uncertainty(unc_out, target, valid)
        total = self.kl_weight * parts["kl"] + self.uncertainty_weight * parts["uncertainty"]
        if "ce" in parts:
            total = total + self.ce_weight * parts["ce"]
        return total, parts


class ThreadRecipeLoss(nn.Module):
    """The forum thread's recipe, faithful by default; each switch removes one ingredient.

    Thread: ``0.1 * CE + KLDivLoss(reduction="mean")(log_softmax(seg), probs) +
    MSELoss(reduction="mean")(sigmoid(unc), per-class std)`` with the teacher's probabilities
    and std cast to float16. Switches: ``sigmoid=False`` (raw head output), ``kl="per_pixel"``
    (polyhead's KL scaling instead of the element mean), ``transform="sqrt"`` (regress
    ``sqrt(std)``), ``half_targets=False``, ``uncertainty_target`` (the thread regresses
    ``std_per_class``), ``normalize=True`` (divide the MSE by the batch variance of its
    target, as `UncertaintyRegressionLoss` does; not in the thread). The thread's CE ignored
    class 0 (its data set's void label); here CE ignores ``ignore_index`` (the data's).
    """

    def __init__(
        self,
        ce_weight: float = 0.1,
        kl_weight: float = 1.0,
        uncertainty_weight: float = 1.0,
        sigmoid: bool = True,
        kl: str = "element_mean",
        transform: str = "identity",
        half_targets: bool = True,
        uncertainty_target: str = "std_per_class",
        normalize: bool = False,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__()
        if kl not in ("element_mean", "per_pixel"):
            raise ConfigError(f"kl must be 'element_mean' or 'per_pixel', got {kl!r}")
        if transform not in TRANSFORMS:
            raise ConfigError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
        self.ce_weight, self.kl_weight = float(ce_weight), float(kl_weight)
        self.uncertainty_weight = float(uncertainty_weight)
        self.sigmoid, self.kl, self.transform = bool(sigmoid), kl, transform
        self.half_targets, self.normalize = bool(half_targets), bool(normalize)
        self.uncertainty_target = check_target(uncertainty_target)
        self.ignore_index = ignore_index
        self.distillation_criterion = nn.KLDivLoss(reduction="mean")
        self.uncertainty_criterion = nn.MSELoss(reduction="mean")
        self.per_pixel_kl = SoftLabelLoss(mode="kl")

    @property
    def activation(self) -> str:
        return "sigmoid" if self.sigmoid else "none"

    def _cast(self, t: torch.Tensor) -> torch.Tensor:
        # the thread computes the loss against .to(float16) targets; keep that rounding
        return t.half().float() if self.half_targets else t.float()

    def forward(
        self, seg_logits: torch.Tensor, unc_out: torch.Tensor, targets: Mapping[str, Any]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        probs = self._cast(targets["soft"])
        if self.kl == "element_mean":
            with warnings.catch_warnings():  # torch warns that "mean" is not "batchmean": the point
                warnings.simplefilter("ignore", UserWarning)
                kl = self.distillation_criterion(
                    torch.log_softmax(seg_logits.float(), dim=1), probs
                )
        else:
            kl = self.per_pixel_kl(seg_logits, probs)
        parts = {"kl": kl}
        if self.ce_weight > 0:
            ignore = self.ignore_index if self.ignore_index is not None else 255
            parts["ce"] = F.cross_entropy(seg_logits.float(), targets["hard"], ignore_index=ignore)
        target = select_target(targets, self.uncertainty_target, probs.shape[1])
        check_channels(unc_out, target, self.uncertainty_target)
        pred = torch.sigmoid(unc_out.float()) if self.sigmoid else unc_out.float()
        target = forward_transform(self._cast(target), self.transform)
        parts["uncertainty"] = self.uncertainty_criterion(pred, target)
        if self.normalize:
            parts["uncertainty"] = parts["uncertainty"] / target_variance(target)
        total = self.kl_weight * kl + self.uncertainty_weight * parts["uncertainty"]
        if "ce" in parts:
            total = total + self.ce_weight * parts["ce"]
        return total, parts
