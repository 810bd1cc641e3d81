"""``UPerNetDualHead``: the seed's dual-head model, a preset of MultiHeadSegmentationModel."""

from __future__ import annotations

import os

import torch

from polyhead.models.multihead import MultiHeadSegmentationModel


class UPerNetDualHead(MultiHeadSegmentationModel):
    """Shared encoder with two UPerNet heads: ``A`` learns hard masks, ``B`` soft masks.

    The seed's interface, as an adapter at the edge: ``forward(x)`` returns the logits of
    ``inference_head`` ("A", "B" or "average", the mean of both heads' logits) and keeps both
    heads' logits of that call in ``last_logits_A`` and ``last_logits_B``. polyhead's own
    tasks, predictor and export never call it: they use :meth:`forward_heads` (the
    ``{head: logits}`` contract of every polyhead model). ``inference_head`` can be changed at
    any time, e.g. when loading a checkpoint, without retraining.
    """

    def __init__(
        self,
        encoder_name: str = "tu-convnextv2_tiny.fcmae_ft_in22k_in1k_384",
        encoder_depth: int = 5,
        encoder_weights: str | os.PathLike | None = "imagenet",
        decoder_channels: int = 256,
        in_channels: int = 3,
        classes: int = 6,
        inference_head: str = "average",
    ) -> None:
        head = {"decoder": "upernet", "decoder_channels": decoder_channels}
        super().__init__(
            heads={"A": {**head, "role": "hard"}, "B": {**head, "role": "soft"}},
            encoder_name=encoder_name,
            encoder_depth=encoder_depth,
            encoder_weights=encoder_weights,
            in_channels=in_channels,
            classes=classes,
            inference_head=inference_head,
        )
        self.last_logits_A: torch.Tensor | None = None
        self.last_logits_B: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        outputs = self.forward_heads(x)
        self.last_logits_A, self.last_logits_B = outputs["A"], outputs["B"]
        return self.class_logits(outputs, self.inference_head)
