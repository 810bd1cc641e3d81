"""One prediction path: a model, the head or blend that answers, and TTA -> per-pixel maps.

`Predictor` is what every prediction in polyhead goes through (``polyhead predict`` on any
checkpoint, evaluation, teacher targets, the demo, ONNX export). It runs only the heads its
answer needs, turns their raw outputs into what a user gets (each head's own activation) and
averages those over test-time views. The sliding window only tiles and blends its maps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from polyhead.errors import ConfigError
from polyhead.inference.tta import augmentations, tta_from_config
from polyhead.models.heads import uncertainty_at_class
from polyhead.models.multihead import AVERAGE
from polyhead.models.single import as_polyhead_model

#: names of the maps a `Predictor` returns
PROBABILITIES, UNCERTAINTY = "probabilities", "uncertainty"


def has_uncertainty_head(model: Any) -> bool:
    """Whether ``model`` has a head of role ``uncertainty`` (a distilled student does)."""
    heads = getattr(model, "heads", None) or {}
    return any(getattr(h, "role", None) == "uncertainty" for h in heads.values())


class Predictor(nn.Module):
    """Per-pixel maps for image tiles: ``{"probabilities": [B, K, h, w]}`` and, when asked,
    ``{"uncertainty": [B, 1, h, w]}`` from the model's uncertainty head.

    Args:
        model: a polyhead segmentation model, or any network returning class logits.
        head: the class-map head that answers, or ``"average"`` (softmax of the mean logits
            of the class-map heads); default the model's ``inference_head``.
        tta: test-time augmentation: a spec string (``"flips"``,
            ``"flips+scales=0.75,1,1.25"``), a mapping (``flips``, ``scales``,
            ``size_divisor``), or None. Each view's maps are averaged.
        uncertainty: also return the map of an uncertainty head: True (the model's first) or
            a head name. A per-class head is read at the predicted class.
    """

    def __init__(
        self,
        model: Any,
        head: str | None = None,
        tta: str | Mapping[str, Any] | None = None,
        uncertainty: bool | str = False,
    ) -> None:
        super().__init__()
        self.model = as_polyhead_model(model)
        self.head = head or self.model.inference_head
        needed = list(self.model.heads_for(self.head))
        self.uncertainty_head = self._uncertainty_head(uncertainty)
        if self.uncertainty_head is not None:
            needed.append(self.uncertainty_head)
        self.needed = needed
        self.views = augmentations(**(tta_from_config(tta) or {"flips": ("none",)}))

    def _uncertainty_head(self, uncertainty: bool | str) -> str | None:
        if not uncertainty:
            return None
        names = [n for n, h in self.model.heads.items() if h.role == "uncertainty"]
        if uncertainty is True:
            if not names:
                raise ConfigError("the model has no uncertainty head (role uncertainty)")
            return names[0]
        if uncertainty not in names:
            raise ConfigError(f"{uncertainty!r} is not an uncertainty head; the model's: {names}")
        return str(uncertainty)

    @property
    def n_passes(self) -> int:
        """Model calls per input batch."""
        return len(self.views)

    def maps(self, raw: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The maps of one view from the heads' raw outputs."""
        probs = self.model.class_probabilities(raw, self.head)
        out = {PROBABILITIES: probs}
        if self.uncertainty_head is not None:
            u = self.model.heads[self.uncertainty_head].activate(raw[self.uncertainty_head])
            out[UNCERTAINTY] = uncertainty_at_class(u, probs)
        return out

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = tuple(x.shape[-2:])
        total: dict[str, torch.Tensor] = {}
        for view in self.views:
            raw = self.model.forward_heads(view.apply(x), self.needed)
            for name, value in self.maps({k: view.undo(v, size) for k, v in raw.items()}).items():
                total[name] = value if name not in total else total[name].add_(value)
        return {name: value.div_(len(self.views)) for name, value in total.items()}


def head_outputs(model: Any, x: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Each named head's activated output (class probabilities, an uncertainty map in its
    units), and ``"average"`` (softmax of the class-map heads' mean logits, over the model's
    ``average_temperature``) when named; the
    encoder runs once. What ``polyhead export`` writes, one named output each."""
    unknown = [n for n in names if n != AVERAGE and n not in model.heads]
    if unknown:
        raise ConfigError(f"no head {unknown} in this model; valid: {[*model.heads, AVERAGE]}")
    wanted = {n for name in names for n in (model.class_map_heads() if name == AVERAGE else [name])}
    raw = model.forward_heads(x, [n for n in model.heads if n in wanted])
    out = {}
    for name in names:
        if name == AVERAGE:
            out[name] = model.class_probabilities(raw, AVERAGE)
        else:
            out[name] = model.heads[name].activate(raw[name])
    return out
