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
        nn.Sequential(
            nn.Conv2d(bands, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, n_classes, 3, padding=1)
        )
        for _ in range(members)
    ]
    return EnsembleTeacher(nets)


@pytest.fixture(scope="session")
def tiny_targets(synthetic, tmp_path_factory):
    """(2 teacher checkpoints, distill.csv): 3-step teachers, targets cached by the
    ``distill-targets`` CLI on the synthetic training scenes with 32 px tiles."""
    from polyhead.cli import main

    from .helpers import train_teacher

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tiny_targets")
    teachers = [train_teacher(synthetic, root / f"t{i}", "unet", i, steps=3) for i in range(2)]
    assert (
        main(
            [
                "distill-targets",
                "--teacher",
                *map(str, teachers),
                "--csv",
                str(synthetic.train_csv),
                "--out",
                str(root / "targets"),
                "--tile-size",
                "32",
                "--overlap",
                "16",
            ]
        )
        == 0
    )
    torch.set_num_threads(before)
    return teachers, root / "targets" / "distill.csv"
