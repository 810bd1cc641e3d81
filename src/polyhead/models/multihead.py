"""N named segmentation heads on one shared encoder."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from polyhead.errors import ConfigError
from polyhead.models.encoder import build_encoder
from polyhead.models.heads import HeadSpec

AVERAGE = "average"
#: the multi-head model's buffer: softmax temperature of the ``average`` blend
AVERAGE_TEMPERATURE = "average_temperature"


def _pad_to_multiple(x: torch.Tensor, stride: int) -> torch.Tensor:
    """Pad the bottom/right of ``x`` to multiples of ``stride`` (reflect; replicate if too small)."""
    h, w = x.shape[-2:]
    ph, pw = -h % stride, -w % stride
    if not (ph or pw):
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


class HeadSelection:
    """Which heads answer: the ``{name: head}`` bookkeeping every polyhead model shares.

    Needs ``self.heads`` (name -> `Head`); provides the ``inference_head`` default, the
    class-map heads, and the logits of a selection (one head, or ``"average"``).
    """

    heads: Mapping[str, Any]

    @property
    def inference_head(self) -> str:
        return self._inference_head

    @inference_head.setter
    def inference_head(self, value: str) -> None:
        self.heads_for(value)  # validates
        self._inference_head = value

    def class_map_heads(self) -> list[str]:
        """Heads that predict class logits (hard and soft roles), in order."""
        names = [n for n, h in self.heads.items() if h.class_map]
        if not names:
            raise ConfigError(
                f"the model needs a class-map head (role hard or soft); heads: "
                f"{ {n: h.role for n, h in self.heads.items()} }"
            )
        return names

    def image_level_heads(self) -> list[str]:
        """Heads with one output vector per image (classification, multilabel, regression)."""
        return [n for n, h in self.heads.items() if getattr(h, "image_level", False)]

    def heads_of_role(self, role: str) -> list[str]:
        """Names of the heads with ``role`` (``hard``, ``soft``, ``uncertainty``), in order."""
        return [n for n, h in self.heads.items() if h.role == role]

    def heads_for(self, selection: str) -> list[str]:
        """The heads a selection needs: ``[name]``, or the class-map heads for ``average``."""
        if selection == AVERAGE:
            return self.class_map_heads()
        valid = [*self.class_map_heads(), AVERAGE]
        if selection not in valid:
            what = "not a class-map head" if selection in self.heads else "not a head"
            raise ConfigError(f"head {selection!r} is {what} of this model; valid: {valid}")
        return [selection]

    def class_logits(self, outputs: Mapping[str, torch.Tensor], selection: str) -> torch.Tensor:
        """Logits of a class-map selection: one head's, or the mean over ``average``'s heads."""
        names = self.heads_for(selection)
        if len(names) == 1:
            return outputs[names[0]]
        return torch.stack([outputs[n] for n in names]).mean(0)

    def class_scores(self, outputs: Mapping[str, torch.Tensor], selection: str) -> torch.Tensor:
        """Float32 scores of a class-map selection whose softmax over channels is
        `class_probabilities`: one head's tempered logits, or the mean logits over
        ``average_temperature`` for ``average``."""
        names = self.heads_for(selection)
        if len(names) == 1:
            return self.heads[names[0]].scores(outputs[names[0]])
        logits = self.class_logits(outputs, selection).float()
        temperature = getattr(self, AVERAGE_TEMPERATURE, None)
        return logits if temperature is None else logits / temperature

    def class_probabilities(
        self, outputs: Mapping[str, torch.Tensor], selection: str
    ) -> torch.Tensor:
        """Probabilities of a class-map selection: one head's own activation (its calibrated
        temperature), or ``softmax(mean logits / average_temperature)`` for ``average``."""
        return torch.softmax(self.class_scores(outputs, selection), dim=1)


class MultiHeadSegmentationModel(HeadSelection, nn.Module):
    """One encoder, several heads; ``forward`` returns ``{head name: raw output}``.

    Args:
        heads: ``{name: spec}``; a spec is a decoder name or a mapping with ``decoder``
            (upernet, fpn, unet, deeplabv3plus, segformer, pspnet, ...), ``role`` (hard, soft,
            uncertainty; image-level: classification, multilabel, regression, pooled from an
            encoder stage: see `polyhead.models.heads`), optional ``classes`` and options.
        encoder_name: any SMP encoder name, including timm universal ``tu-*`` names.
        encoder_depth: number of encoder stages (3-5).
        encoder_weights: None (random), a local weights file, or a named identifier
            (needs network).
        in_channels: input bands.
        classes: output classes of heads that do not set their own.
        encoder_output_stride: 32, or 16/8 for dilated encoders (DeepLabV3+ heads).
        inference_head: the head (or ``"average"``, the mean logits of the class-map heads)
            that answers when a predictor is given none; stored with the model's config.
        pad_to_stride: pad inputs whose height or width is not a multiple of the encoder's
            output stride (reflect padding at the bottom/right) and crop the outputs back,
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
                name: spec.build(
                    name,
                    self.encoder.out_channels,
                    encoder_depth,
                    self.encoder.output_stride,
                    classes,
                )
                for name, spec in specs.items()
            }
        )
        self.encoder_name = encoder_name
        self.in_channels = in_channels
        self.classes = classes
        self.pad_to_stride = bool(pad_to_stride)
        self.inference_head = inference_head or self.class_map_heads()[0]
        self.register_buffer(AVERAGE_TEMPERATURE, torch.ones(()))

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        """State dicts written before temperature calibration: ``average_temperature`` 1.0."""
        state_dict.setdefault(prefix + AVERAGE_TEMPERATURE, torch.ones(()))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def check_input_shape(self, x: torch.Tensor) -> None:
        stride = self.encoder.output_stride
        h, w = x.shape[-2:]
        if h % stride or w % stride:
            ph, pw = -(-h // stride) * stride, -(-w // stride) * stride
            raise RuntimeError(
                f"input of height={h}, width={w} is not divisible by the encoder's output stride "
                f"{stride}; pad it to ({ph}, {pw})"
            )

    def forward(
        self, x: torch.Tensor, heads: Sequence[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """``{name: raw output}`` of ``heads`` (default: all); see `forward_heads`."""
        return self.forward_heads(x, heads)

    def forward_heads(
        self, x: torch.Tensor, heads: Sequence[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """Run the encoder once and ``heads`` (default: all) on its features: ``{name: raw}``.

        The contract polyhead's tasks, predictor and export rely on; only the heads asked
        for are computed. (``forward`` is the same, except on the seed adapter.)
        """
        names = list(self.heads) if heads is None else list(heads)
        h, w = x.shape[-2:]
        if self.pad_to_stride:
            x = _pad_to_multiple(x, self.encoder.output_stride)
        elif not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            self.check_input_shape(x)
        features = self.encoder(x)
        outputs = {name: self.heads[name](features) for name in names}
        if self.pad_to_stride:
            outputs = {n: out if out.ndim == 2 else out[..., :h, :w] for n, out in outputs.items()}
        return outputs
