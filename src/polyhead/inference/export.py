"""ONNX export of segmentation models: one named output per head, through the predictor path.

The graph takes ``image`` (float32 ``[batch, bands, height, width]``, normalised as in
training; height and width multiples of the encoder's output stride) and returns each chosen
head's activated output (`head_outputs`): class probabilities for class-map heads, the
uncertainty map in its own units for an uncertainty head, ``[batch, n]`` for an image-level
head (class probabilities, label probabilities or values), and ``average`` (softmax of the
class-map heads' mean logits) when asked. Batch, height and width are dynamic.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from polyhead.errors import ConfigError
from polyhead.inference.predictor import head_outputs
from polyhead.io import atomic_write

INPUT_NAME = "image"


class SegmentationHeadsForExport(nn.Module):
    """A polyhead segmentation model as a tuple of its chosen heads' activated outputs."""

    def __init__(self, model: nn.Module, heads: Sequence[str]) -> None:
        super().__init__()
        self.model, self.heads = model, list(heads)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = head_outputs(self.model, x, self.heads)
        return tuple(out[h] for h in self.heads)


def export_segmentation_onnx(
    model: nn.Module,
    output: str | os.PathLike,
    heads: Sequence[str] | None = None,
    sample_size: int = 64,
    opset: int = 17,
) -> Path:
    """Write ``model`` (eval, CPU) as ONNX with one named output per head (default: every
    head); ``heads`` may name ``average``. The file is written aside and moved into place."""
    names = list(heads) if heads else list(model.heads)
    wrapper = SegmentationHeadsForExport(model.eval().cpu(), names)
    stride = model.encoder.output_stride
    side = max(stride, -(-sample_size // stride) * stride)
    dummy = torch.randn(2, model.in_channels, side, side)
    with torch.no_grad():
        wrapper(dummy)  # unknown heads fail here, before anything is written
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(output) as tmp:
        try:
            _export(wrapper, dummy, tmp, names, opset, spatial=True)
            fixed = None
        except torch.onnx.errors.SymbolicValueError:  # adaptive pooling on a dynamic size
            # pyramid pooling bins (1, 2, 3, 6) must divide the coarsest feature map
            pooled = stride * 6
            side = max(pooled, -(-sample_size // pooled) * pooled)
            dummy = torch.randn(2, model.in_channels, side, side)
            _export(wrapper, dummy, tmp, names, opset, spatial=False)
            fixed = [side, side]
        _add_metadata(tmp, model, names, fixed)
    return output


def _export(
    wrapper: nn.Module, dummy: torch.Tensor, path: Path, names: list[str], opset: int, spatial: bool
) -> None:
    dims = {0: "batch", 2: "height", 3: "width"} if spatial else {0: "batch"}
    heads = getattr(wrapper.model, "heads", {})
    per_vector = {n for n in names if getattr(heads[n] if n in heads else None, "image_level", 0)}
    axes = {name: {0: "batch"} if name in per_vector else dims for name in [INPUT_NAME, *names]}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's notices
        torch.onnx.export(
            wrapper,
            (dummy,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=names,
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )


def _add_metadata(
    path: Path, model: nn.Module, names: Sequence[str], image_size: list[int] | None
) -> None:
    import onnx

    proto = onnx.load(str(path))
    roles = {n: ("class_map" if n == "average" else model.heads[n].role) for n in names}
    props = {
        "polyhead.heads": json.dumps(roles),
        "polyhead.outputs": "activated",
        "polyhead.in_channels": str(model.in_channels),
        "polyhead.size_divisor": str(model.encoder.output_stride),
        "polyhead.image_size": json.dumps(image_size),  # null: any multiple of size_divisor
    }
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def compare_segmentation_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    shapes: Sequence[tuple[int, int, int]] = ((1, 64, 64), (3, 96, 128)),
    seed: int = 0,
) -> float:
    """Largest absolute difference between onnxruntime and PyTorch, over batches of the
    given ``(batch, height, width)`` shapes (rounded up to the encoder's stride)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    fixed = json.loads(
        session.get_modelmeta().custom_metadata_map.get("polyhead.image_size", "null")
    )
    if fixed:
        shapes = [(b, *fixed) for b in sorted({s[0] for s in shapes})]
    wrapper = SegmentationHeadsForExport(model.eval().cpu(), names)
    stride = model.encoder.output_stride
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    for b, h, w in shapes:
        h, w = -(-h // stride) * stride, -(-w // stride) * stride
        x = torch.randn(b, model.in_channels, h, w, generator=gen)
        with torch.no_grad():
            expected = wrapper(x)
        got = session.run(names, {INPUT_NAME: x.numpy()})
        for e, g in zip(expected, got, strict=True):
            if tuple(e.shape) != tuple(g.shape):
                raise ConfigError(f"ONNX output shape {g.shape} != PyTorch {tuple(e.shape)}")
            worst = max(worst, float(np.abs(e.numpy() - g).max()))
    return worst
