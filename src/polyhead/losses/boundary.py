"""A per-pixel loss weighted up near class borders."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from polyhead.errors import ConfigError
from polyhead.losses.segmentation import CrossEntropyLoss, is_soft_target, target_distribution


def class_border_map(
    target: torch.Tensor, num_classes: int, width: int = 3, ignore_index: int | None = 255
) -> torch.Tensor:
    """Pixels within ``width`` px (chessboard distance) of a pixel of another class.

    Computed by morphology on the GPU: a max-pool (dilation) of each class's one-hot mask
    over a ``2 * width + 1`` window says which classes occur near each pixel; a pixel near two
    or more classes lies on a border band. Ignored pixels belong to no class, so the edge of an
    unlabelled region is not a border; neither is the image edge. Returns ``[B, H, W]`` bool.
    """
    if width < 1:
        raise ConfigError(f"border width must be >= 1 pixel, got {width}")
    shape = (target.shape[0], num_classes, *target.shape[-2:])
    dist, _ = target_distribution(
        target.new_empty(shape, dtype=torch.float32), target, ignore_index
    )
    near = F.max_pool2d(dist, kernel_size=2 * width + 1, stride=1, padding=width)
    return near.sum(dim=1) > 1.5


class BoundaryWeightedLoss(nn.Module):
    """Per-pixel loss whose pixels near class borders weigh ``border_weight`` times more.

    The value is the weighted mean ``sum(w * l) / sum(w)`` over labelled pixels, with ``w = 1``
    inside regions and ``border_weight`` within ``width`` px of a border (see
    :func:`class_border_map`). ``pixel_loss`` must return per-pixel values ``[B, H, W]`` that
    are 0 on ignored pixels, e.g. ``CrossEntropyLoss(reduction="none")`` (the default) or
    ``FocalLoss(reduction="none")``. Soft targets: borders are taken from their argmax.
    """

    def __init__(
        self,
        pixel_loss: nn.Module | None = None,
        width: int = 3,
        border_weight: float = 5.0,
        ignore_index: int | None = 255,
    ) -> None:
        super().__init__()
        if width < 1:
            raise ConfigError(f"BoundaryWeightedLoss width must be >= 1 pixel, got {width}")
        if border_weight < 0:
            raise ConfigError(
                f"BoundaryWeightedLoss border_weight must be >= 0, got {border_weight}"
            )
        if pixel_loss is None:
            pixel_loss = CrossEntropyLoss(ignore_index=ignore_index, reduction="none")
        if getattr(pixel_loss, "reduction", "none") != "none":
            raise ConfigError(
                f"BoundaryWeightedLoss: pixel_loss {type(pixel_loss).__name__} must return "
                "per-pixel values; set its reduction='none'"
            )
        self.pixel_loss = pixel_loss
        self.width = int(width)
        self.border_weight = float(border_weight)
        self.ignore_index = ignore_index  # also set on pixel_loss: one ignore_index for both

    @property
    def ignore_index(self) -> int | None:
        return self._ignore_index

    @ignore_index.setter
    def ignore_index(self, value: int | None) -> None:
        self._ignore_index = value
        if hasattr(self.pixel_loss, "ignore_index"):
            self.pixel_loss.ignore_index = value

    def pixel_weights(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Weight map ``[B, H, W]``: ``border_weight`` on borders, 1 elsewhere, 0 if unlabelled."""
        dist, valid = target_distribution(logits.detach(), target, self.ignore_index)
        labels, ignore = target, self.ignore_index
        if is_soft_target(logits, target):
            labels, ignore = torch.where(valid, dist.argmax(1), -1), -1
        border = class_border_map(labels, logits.shape[1], self.width, ignore)
        weights = 1.0 + (self.border_weight - 1.0) * border.float()
        return weights * valid

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        per_pixel = self.pixel_loss(logits, target)
        if per_pixel.shape != logits.shape[:1] + logits.shape[2:]:
            raise ValueError(
                f"pixel_loss returned shape {tuple(per_pixel.shape)}; it must return per-pixel "
                "values [B, H, W] (reduction='none')"
            )
        weights = self.pixel_weights(logits, target)
        denom = weights.sum()
        total = (per_pixel * weights).sum()
        return torch.where(denom > 0, total / denom.clamp_min(1e-12), total * 0.0)
