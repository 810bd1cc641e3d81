"""A segmentation head: one decoder plus its output layer, with a name and a role."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from segmentation_models_pytorch.base import initialization as smp_init
from torch import nn

from polyhead.errors import ConfigError
from polyhead.models.decoders import build_decoder

#: What each role learns from. ``hard``: integer class masks; ``soft``: per-class probability
#: masks; ``uncertainty``: a per-pixel scalar map (e.g. an ensemble's spread).
ROLES = ("hard", "soft", "uncertainty")


@dataclass
class HeadSpec:
    """How to build one head: decoder type, role, output channels and decoder options."""

    decoder: str = "upernet"
    role: str = "hard"
    classes: int | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, name: str, cfg: HeadSpec | Mapping[str, Any] | str) -> HeadSpec:
        """Accept a HeadSpec, a decoder name, or a mapping ``{decoder, role, classes, **options}``."""
        if isinstance(cfg, HeadSpec):
            spec = cfg
        elif isinstance(cfg, str):
            spec = cls(decoder=cfg)
        elif isinstance(cfg, Mapping):
            cfg = dict(cfg)
            spec = cls(
                decoder=cfg.pop("decoder", "upernet"),
                role=cfg.pop("role", "hard"),
                classes=cfg.pop("classes", None),
                options=cfg,
            )
        else:
            raise ConfigError(f"heads.{name}: expected a mapping or a decoder name, got {cfg!r}")
        if spec.role not in ROLES:
            raise ConfigError(f"heads.{name}.role is {spec.role!r}; valid roles: {list(ROLES)}")
        return spec


class SegmentationHeadBlock(nn.Module):
    """Decoder + segmentation head reading the shared encoder's feature list."""

    def __init__(
        self,
        spec: HeadSpec,
        encoder_channels: Sequence[int],
        encoder_depth: int,
        output_stride: int,
        classes: int,
    ) -> None:
        super().__init__()
        self.role = spec.role
        self.classes = spec.classes if spec.classes is not None else classes
        if spec.role == "uncertainty" and spec.classes is None:
            self.classes = 1
        self.decoder, self.segmentation_head = build_decoder(
            spec.decoder,
            encoder_channels,
            encoder_depth,
            output_stride,
            self.classes,
            **spec.options,
        )
        smp_init.initialize_decoder(self.decoder)
        smp_init.initialize_head(self.segmentation_head)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.segmentation_head(self.decoder(features))
