"""Fixtures for the distillation tests: small fake teachers and one-thread torch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from polyhead.distill.teacher import EnsembleTeacher


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine this is faster than two competing."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def conv_teacher(bands: int = 4, n_classes: int = 4, members: int = 2, seed: int = 0):
    """An ensemble of small random conv nets (a real, input-dependent spread)."""
    torch.manual_seed(seed)
    nets = [
        nn.Sequential(nn.Conv2d(bands, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, n_classes, 3,
                                                                               padding=1))
        for _ in range(members)
    ]
    return EnsembleTeacher(nets)
