"""One prediction path: a model, the head or blend that answers, and TTA -> per-pixel maps.

`Predictor` is what every prediction in polyhead goes through (``polyhead predict`` on any
checkpoint, evaluation, teacher targets, the demo, ONNX export). It runs only the heads its
answer needs, turns their raw outputs into what a user gets (each head's own activation) and
averages those over test-time views (flips, D4 rotations, scales, MC-dropout samples), with
the per-pixel spread of the views beside the mean. The sliding window only tiles and blends its
maps.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from polyhead.errors import ConfigError
from polyhead.inference.tta import MCSampler, augmentations, check_mc_dropout, tta_from_config
from polyhead.models.heads import uncertainty_at_class
from polyhead.models.multihead import AVERAGE
from polyhead.models.single import as_polyhead_model

#: names of the maps a `Predictor` returns
PROBABILITIES, UNCERTAINTY, SPREAD = "probabilities", "uncertainty", "spread"


def has_uncertainty_head(model: Any) -> bool:
    """Whether ``model`` has a head of role ``uncertainty`` (a distilled student does)."""
    heads = getattr(model, "heads", None) or {}
    return any(getattr(h, "role", None) == "uncertainty" for h in heads.values())


class Predictor(nn.Module):
    """Per-pixel maps for image tiles: ``{"probabilities": [B, K, h, w]}``; ``{"spread":
    [B, 1, h, w]}`` under D4 or MC-dropout TTA; and, when asked, ``{"uncertainty":
    [B, 1, h, w]}`` from the model's uncertainty head.

    Args:
        model: a polyhead segmentation model, or any network returning class logits.
        head: the class-map head that answers, or ``"average"`` (softmax of the mean logits
            of the class-map heads); default the model's ``inference_head``.
        tta: test-time augmentation: a spec string (``"flips"``, ``"d4"``,
            ``"mc-dropout=8"``, ``"d4+mc-dropout=4"``, ``"flips+scales=0.75,1,1.25"``), a
            mapping (see `polyhead.inference.tta.tta_from_config`), or None. Each pass's maps
            are averaged; MC-dropout runs every view that many times with the model's dropout
            layers sampling (batch norm stays in eval); a model without dropout is refused.
        uncertainty: also return the map of an uncertainty head: True (the model's first) or
            a head name. A per-class head is read at the predicted class.
        spread: return ``"spread"``, the per-pixel standard deviation over the passes
            (``ddof=1``, as ``EnsembleTeacher``'s ``std_winning``) of the probability of the
            mean's arg-max class, float32. Default: with D4 rotations or MC-dropout (for
            flips or scales alone pass ``spread=True``); needs 2 or more passes.
    """

    def __init__(
        self,
        model: Any,
        head: str | None = None,
        tta: str | Mapping[str, Any] | None = None,
        uncertainty: bool | str = False,
        spread: bool | None = None,
    ) -> None:
        super().__init__()
        self.model = as_polyhead_model(model)
        self.head = head or self.model.inference_head
        needed = list(self.model.heads_for(self.head))
        self.uncertainty_head = self._uncertainty_head(uncertainty)
        if self.uncertainty_head is not None:
            needed.append(self.uncertainty_head)
        self.needed = needed
        options = dict(tta_from_config(tta) or {"flips": ("none",)})
        n_samples, seed = options.pop("mc_dropout", 0), options.pop("seed", None)
        self.views = augmentations(**options)
        layers = check_mc_dropout(self._sampled_part(), type(model).__name__) if n_samples else []
        self.sampler = MCSampler(layers, n_samples, seed)
        # flips/scales alone keep their outputs of old; d4 and mc-dropout are asked for spread
        asked = n_samples > 0 or any(view.rot for view in self.views)
        self.spread = asked if spread is None else bool(spread)
        if self.spread and self.n_passes < 2:
            raise ConfigError(
                "spread needs a TTA of at least 2 passes (e.g. tta='d4' or 'mc-dropout=8')"
            )

    def _sampled_part(self) -> nn.Module:
        """The modules a prediction runs: the encoder and the needed heads (else the model)."""
        heads = getattr(self.model, "heads", None) or {}
        parts = [
            getattr(self.model, "encoder", None),
            *(heads[n] for n in self.needed if n in heads),
        ]
        parts = [p for p in parts if isinstance(p, nn.Module)]
        return nn.ModuleList(parts) if parts else self.model

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
        """Model calls per input batch (views times MC-dropout samples)."""
        return len(self.views) * max(1, self.sampler.n_samples)

    @property
    def softmax_scores(self) -> bool:
        """Whether `class_scores` answers: one pass (one view, no MC-dropout) and no map
        but the probabilities, which are then the softmax of the scores over channels."""
        one_pass = len(self.views) == 1 and not self.sampler.n_samples
        scores = callable(getattr(self.model, "class_scores", None))
        return scores and one_pass and not self.spread and self.uncertainty_head is None

    def class_scores(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, K, h, w]`` float32 scores whose softmax over channels is ``forward(x)``'s
        probabilities (only when `softmax_scores`): for a caller that needs no more than
        the arg-max where tiles do not overlap, so the softmax runs where they blend."""
        if not self.softmax_scores:
            raise ConfigError("class scores need one pass (no TTA, spread or uncertainty)")
        return self.model.class_scores(self._raw(self.views[0], x), self.head)

    def _raw(self, view: Any, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The needed heads' raw outputs for one view of ``x``, in ``x``'s frame."""
        size = tuple(x.shape[-2:])
        raw = self.model.forward_heads(view.apply(x), self.needed)
        return {k: view.undo(v, size) for k, v in raw.items()}

    def maps(self, raw: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The maps of one view from the heads' raw outputs."""
        probs = self.model.class_probabilities(raw, self.head)
        out = {PROBABILITIES: probs}
        if self.uncertainty_head is not None:
            u = self.model.heads[self.uncertainty_head].activate(raw[self.uncertainty_head])
            out[UNCERTAINTY] = uncertainty_at_class(u, probs)
        return out

    def passes(self, x: torch.Tensor) -> Iterator[dict[str, torch.Tensor]]:
        """The maps of each pass (view, MC-dropout sample), in the input's frame."""
        for _ in self.sampler.samples(x.device):
            for view in self.views:
                yield self.maps(self._raw(view, x))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        total: dict[str, torch.Tensor] = {}
        spread = _Spread() if self.spread else None
        for maps in self.passes(x):
            if spread is not None:
                spread.add(maps.pop(PROBABILITIES))
            for name, value in maps.items():
                total[name] = value if name not in total else total[name].add_(value)
        out = total
        if self.n_passes > 1:  # a whole pass over the maps; skip it for plain prediction
            out = {name: value.div_(self.n_passes) for name, value in total.items()}
        if spread is not None:
            out[PROBABILITIES], out[SPREAD] = spread.result()
        return out


class _Spread:
    """Welford's running mean and variance of per-pass probabilities (exact 0 for equal
    passes, where sums of squares would cancel to rounding noise)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def add(self, p: torch.Tensor) -> None:
        self.n += 1
        p = p.float()
        if self.mean is None or self.m2 is None:
            self.mean, self.m2 = p.clone(), torch.zeros_like(p)
            return
        delta = p - self.mean
        self.mean.add_(delta / self.n)
        self.m2.addcmul_(delta, p - self.mean)

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean probabilities and the std (ddof=1) at the mean's arg-max class."""
        assert self.mean is not None and self.m2 is not None and self.n > 1
        winner = self.mean.argmax(dim=1, keepdim=True)
        std = self.m2.gather(1, winner).div_(self.n - 1).clamp_min_(0.0).sqrt_()
        return self.mean, std


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
