"""ONNX export of multi-head classifiers: one named output per head, dynamic batch.

The graph takes ``image`` (float32 ``[batch, 3, H, W]``, already resized and normalised) and
returns one output per exported head, named after the head: logits, or probabilities with
``probabilities=True`` (softmax; sigmoid for 1-output heads). Metadata properties record the
heads, the output kind, the input size and the normalisation, so a runtime needs no config.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from polyhead.errors import ConfigError
from polyhead.models.classifier import head_probabilities

INPUT_NAME = "image"


class HeadsForExport(nn.Module):
    """Wraps a model returning ``{head: logits}``; returns the chosen heads as a tuple."""

    def __init__(self, model: nn.Module, heads: Sequence[str], probabilities: bool = False):
        super().__init__()
        self.model = model
        self.heads = list(heads)
        self.probabilities = probabilities

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if hasattr(self.model, "forward_head"):  # MultiHeadClassifier: compute only these heads
            out = self.model.forward_head(self.model.forward_features(x), heads=self.heads)
        else:
            out = self.model(x)
        values = [out[h] for h in self.heads]
        if self.probabilities:
            values = [head_probabilities(v) for v in values]
        return tuple(values)


def select_heads(model: nn.Module, heads: Sequence[str] | None) -> list[str]:
    """The heads to export: all of the model's when ``heads`` is None, else checked names."""
    available = list(getattr(model, "head_names", None) or [])
    if heads is None:
        if not available:
            raise ConfigError("the model has no head_names; name the heads to export")
        return available
    unknown = [h for h in heads if available and h not in available]
    if unknown or not heads:
        raise ConfigError(
            f"--head {', '.join(unknown) or '(none)'}: the model's heads are {', '.join(available)}"
        )
    return list(heads)


def export_model(
    model: nn.Module,
    output: str | os.PathLike,
    image_size: int | Sequence[int] = 224,
    heads: Sequence[str] | None = None,
    probabilities: bool = False,
    opset: int = 17,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Export ``model`` (eval mode, CPU) to ONNX with one named output per head."""
    names = select_heads(model, heads)
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    outputs = dict(getattr(model, "head_outputs", {}))
    if isinstance(getattr(model, "heads", None), nn.ModuleDict) and set(model.heads) != set(names):
        model = copy.deepcopy(model)  # unused heads' weights would stay in the file otherwise
        for name in [n for n in model.heads if n not in names]:
            del model.heads[name]
    wrapper = HeadsForExport(model, names, probabilities).eval().cpu()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.randn(2, 3, h, w)
    axes = {name: {0: "batch"} for name in [INPUT_NAME, *names]}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            wrapper,
            (dummy,),
            str(output),
            input_names=[INPUT_NAME],
            output_names=names,
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )
    import onnx

    proto = onnx.load(str(output))
    props = {
        "polyhead.heads": json.dumps({n: outputs.get(n) for n in names}),
        "polyhead.outputs": "probabilities" if probabilities else "logits",
        "polyhead.image_size": json.dumps([h, w]),
        **(metadata or {}),
    }
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    onnx.save(proto, str(output))
    return output


def compare_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    batch_sizes: Sequence[int] = (1, 3),
    seed: int = 0,
) -> float:
    """Largest absolute difference between onnxruntime and PyTorch on random batches."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    shape = session.get_inputs()[0].shape
    probs = "probabilities" in session.get_modelmeta().custom_metadata_map.get(
        "polyhead.outputs", ""
    )
    wrapper = HeadsForExport(model, names, probs).eval()
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    for b in batch_sizes:
        x = torch.randn(b, 3, int(shape[2]), int(shape[3]), generator=gen)
        with torch.no_grad():
            expected = wrapper(x)
        got = session.run(names, {INPUT_NAME: x.numpy()})
        for e, g in zip(expected, got, strict=True):
            worst = max(worst, float(np.abs(e.numpy() - g).max()))
    return worst
