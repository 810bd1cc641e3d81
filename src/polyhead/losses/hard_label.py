"""Helpers for losses on integer class masks."""

from __future__ import annotations

import logging

from torch import nn

log = logging.getLogger(__name__)


def ensure_ignore_index(loss: nn.Module, ignore_index: int) -> nn.Module:
    """Point a hard-mask loss at the data's ``ignore_index`` when left at its default.

    SMP losses default to ``ignore_index=None`` and torch's CrossEntropyLoss to -100; with
    masks that mark unlabelled pixels 255 either would crash or learn class 255. A loss whose
    ``ignore_index`` was set explicitly to another value is left alone.
    """
    current = getattr(loss, "ignore_index", "absent")
    if current in (None, -100) and current != ignore_index:
        loss.ignore_index = ignore_index
        log.info("%s: ignore_index set to %d (the data's)", type(loss).__name__, ignore_index)
    return loss
