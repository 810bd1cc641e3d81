"""N named segmentation heads on one shared encoder."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from polyhead.errors import ConfigError
from polyhead.models.encoder import build_encoder
from polyhead.models.heads import HeadSpec, SegmentationHeadBlock

AVERAGE = "average"


def _pad_to_multiple(x: torch.Tensor, stride: int) -> torch.Tensor:
    """Pad the bottom/right of ``x`` to multiples of ``stride`` (reflect; replicate if too small)."""
    h, w = x.shape[-2:]
    ph, pw = -h % stride, -w % stride
    if not (ph or pw):
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


class MultiHeadSegmentationModel(nn.Module):
    """One encoder, several heads; ``forward`` runs the encoder once and returns ``{head: logits}``.

    Args:
        heads: ``{name: spec}``; a spec is a decoder name or a mapping with ``decoder``
            (upernet, fpn, unet, deeplabv3plus, segformer, pspnet), ``role`` (hard, soft,
            uncertainty), optional ``classes`` and decoder options.
        encoder_name: any SMP encoder name, including timm universal ``tu-*`` names.
        encoder_depth: number of encoder stages (3-5).
        encoder_weights: None (random), a local weights file, or a named identifier
            (needs network).
        in_channels: input bands.
        classes: output classes of heads that do not set their own.
        encoder_output_stride: 32, or 16/8 for dilated encoders (DeepLabV3+ heads).
        inference_head: head used by :meth:`predict` when none is given: a head name or
            ``"average"`` (mean logits of the hard and soft heads).
        pad_to_stride: pad inputs whose height or width is not a multiple of the encoder's
            output stride (reflect padding at the bottom/right) and crop the logits back,
            instead of raising.
    """

    def __init__(
        self,
        heads: Mapping[str, Any],
        encoder_name: str = "resnet34",
        encoder_depth: int = 5,
        encoder_weights: str | os.PathLike | None = None,
        in_channels: int = 3,
        classes: int = 1,
        encoder_output_stride: int = 32,
        inference_head: str | None = None,
        pad_to_stride: bool = False,
    ) -> None:
        super().__init__()
        if not heads:
            raise ConfigError("heads: at least one head is needed")
        self.encoder = build_encoder(
            encoder_name, in_channels, encoder_depth, encoder_weights, encoder_output_stride
        )
        specs = {name: HeadSpec.from_config(name, cfg) for name, cfg in heads.items()}
        self.heads = nn.ModuleDict(
            {
                name: SegmentationHeadBlock(
                    spec,
                    self.encoder.out_channels,
                    encoder_depth,
                    self.encoder.output_stride,
                    classes,
                )
                for name, spec in specs.items()
            }
        )
        self.encoder_name = encoder_name
        self.classes = classes
        self.pad_to_stride = bool(pad_to_stride)
        self.inference_head = inference_head or next(iter(self.heads))

    @property
    def inference_head(self) -> str:
        return self._inference_head

    @inference_head.setter
    def inference_head(self, value: str) -> None:
        self._validate_head(value)
        self._inference_head = value

    @property
    def head_roles(self) -> dict[str, str]:
        return {name: head.role for name, head in self.heads.items()}

    def _validate_head(self, name: str) -> None:
        if name != AVERAGE and name not in self.heads:
            raise ConfigError(
                f"inference_head {name!r} is not a head of this model; valid: "
                f"{[*self.heads, AVERAGE]}"
            )
        if name == AVERAGE and not self.averaged_heads():
            raise ConfigError("inference_head 'average' needs at least one hard or soft head")

    def averaged_heads(self) -> list[str]:
        """Heads whose logits ``"average"`` blends: the class-map heads (hard and soft roles)."""
        return [n for n, h in self.heads.items() if h.role in ("hard", "soft")]

    def check_input_shape(self, x: torch.Tensor) -> None:
        stride = self.encoder.output_stride
        h, w = x.shape[-2:]
        if h % stride or w % stride:
            ph, pw = -(-h // stride) * stride, -(-w // stride) * stride
            raise RuntimeError(
                f"input of height={h}, width={w} is not divisible by the encoder's output stride "
                f"{stride}; pad it to ({ph}, {pw})"
            )

    def forward_heads(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the encoder once and every head on its features."""
        h, w = x.shape[-2:]
        if self.pad_to_stride:
            x = _pad_to_multiple(x, self.encoder.output_stride)
        elif not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            self.check_input_shape(x)
        features = self.encoder(x)
        outputs = {name: head(features) for name, head in self.heads.items()}
        if self.pad_to_stride:
            outputs = {name: out[..., :h, :w] for name, out in outputs.items()}
        return outputs

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_heads(x)

    def select(self, outputs: Mapping[str, torch.Tensor], head: str | None = None) -> torch.Tensor:
        """Pick one head's logits from ``outputs`` (``"average"``: mean of the class-map heads)."""
        head = head or self.inference_head
        self._validate_head(head)
        if head == AVERAGE:
            names = self.averaged_heads()
            return torch.stack([outputs[n] for n in names]).mean(0)
        return outputs[head]

    @torch.inference_mode()
    def predict(self, x: torch.Tensor, head: str | None = None) -> torch.Tensor:
        """Eval-mode logits of ``head`` (default: ``inference_head``)."""
        if self.training:
            self.eval()
        return self.select(self.forward_heads(x), head)
