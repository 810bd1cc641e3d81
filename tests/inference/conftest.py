"""Fixtures of every inference test."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from polyhead.inference import pipeline_blend


@pytest.fixture(autouse=True)
def nan_blend_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The blend's sums start as NaN, not the zeros fresh memory happens to hold, so a
    pixel read before a tile set it shows in every prediction these tests make."""
    monkeypatch.setattr(
        pipeline_blend,
        "uninitialized",
        lambda shape, device: torch.full(tuple(shape), np.nan, device=device),
    )
