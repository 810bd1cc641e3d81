"""Test-time augmentation: flips and scales, and their inverses.

`Augmentation` is one view (a flip at a scale) with ``apply`` and ``undo``; `augmentations`
lists every flip at every scale. `polyhead.inference.Predictor` averages each head's
activated maps (probabilities, uncertainty) over the views; `TTAModel` does the same for a
plain logits network and returns the LOG of the averaged probabilities, so a downstream
``softmax`` gives back the averaged probabilities (``softmax(log p) = p``, up to rounding).
Teacher ensembles take their flip members from here too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from polyhead.errors import ConfigError

FLIPS: dict[str, tuple[int, ...]] = {"none": (), "h": (-1,), "v": (-2,), "hv": (-2, -1)}
ALL_FLIPS = ("none", "h", "v", "hv")
DEFAULT_SCALES = (0.75, 1.0, 1.25)
_TINY = torch.finfo(torch.float32).tiny


def _check(flips: Sequence[str], scales: Sequence[float], size_divisor: int) -> None:
    if not flips or any(f not in FLIPS for f in flips):
        raise ConfigError(f"flips must be a non-empty subset of {tuple(FLIPS)}, got {flips!r}")
    try:
        bad_scales = not scales or any(not 0.0 < float(s) <= 8.0 for s in scales)
        bad_divisor = int(size_divisor) < 1
    except (TypeError, ValueError):
        bad_scales = bad_divisor = True
    if bad_scales:
        raise ConfigError(f"scales must be a non-empty list of numbers in (0, 8], got {scales!r}")
    if bad_divisor:
        raise ConfigError(f"size_divisor must be >= 1, got {size_divisor}")


def scaled_size(size: int, scale: float, size_divisor: int = 32) -> int:
    """``size * scale`` rounded to the nearest multiple of ``size_divisor`` (at least one)."""
    return max(size_divisor, int(round(size * scale / size_divisor)) * size_divisor)


@dataclass(frozen=True)
class Augmentation:
    """One test-time view of a batch: a flip (``FLIPS`` key) at a scale, and its inverse."""

    flip: str = "none"
    scale: float = 1.0
    size_divisor: int = 32

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The augmented batch: resized (bilinear, to multiples of ``size_divisor``), flipped."""
        if self.scale != 1.0:
            h, w = x.shape[-2:]
            size = (
                scaled_size(h, self.scale, self.size_divisor),
                scaled_size(w, self.scale, self.size_divisor),
            )
            if size != (h, w):
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        dims = FLIPS[self.flip]
        return torch.flip(x, dims) if dims else x

    def undo(self, y: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """A per-pixel output of the augmented batch, back in the input's frame ``size``."""
        dims = FLIPS[self.flip]
        if dims:
            y = torch.flip(y, dims)
        if self.scale != 1.0 and tuple(y.shape[-2:]) != tuple(size):
            y = F.interpolate(y.float(), size=size, mode="bilinear", align_corners=False)
        return y


def augmentations(
    flips: Sequence[str] = ALL_FLIPS, scales: Sequence[float] = (1.0,), size_divisor: int = 32
) -> list[Augmentation]:
    """Every flip at every scale (validated)."""
    _check(flips, scales, size_divisor)
    return [Augmentation(f, float(s), int(size_divisor)) for s in scales for f in flips]


class TTAModel(nn.Module):
    """Average the softmax of a logits ``model`` over flips and scales; return log-probabilities.

    The same views as `polyhead.inference.Predictor` with ``tta=``, for any network that
    returns class logits ``[B, K, h, w]``. ``flips``: any of ``"none"`` (identity), ``"h"``
    (left-right), ``"v"`` (up-down), ``"hv"`` (both). ``scales``: input resize factors (see
    `Augmentation`); the logits are resized back (bilinear) before the softmax. The output is
    ``log(mean_t softmax(logits_t))``: feed it to anything that applies a softmax and you get
    the averaged probabilities; it is not a calibrated logit in any other sense.
    """

    def __init__(
        self,
        model: Any,
        flips: Sequence[str] = ALL_FLIPS,
        scales: Sequence[float] = (1.0,),
        size_divisor: int = 32,
    ) -> None:
        super().__init__()
        self.model = model
        self.views = augmentations(flips, scales, size_divisor)
        self.flips, self.scales = tuple(flips), tuple(float(s) for s in scales)
        self.size_divisor = int(size_divisor)

    @property
    def n_passes(self) -> int:
        """Model calls per input batch."""
        return len(self.views)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log of the averaged probabilities ``[B, K, h, w]`` for ``x [B, C, h, w]``."""
        size = tuple(x.shape[-2:])
        total: torch.Tensor | None = None
        for view in self.views:
            logits = self.model(view.apply(x))
            if not isinstance(logits, torch.Tensor):
                raise ConfigError(
                    "TTAModel needs a model that returns a logits tensor; for a polyhead "
                    "model use polyhead.inference.Predictor(model, head=..., tta=...)"
                )
            probs = torch.softmax(view.undo(logits, size).float(), dim=1)
            total = probs if total is None else total.add_(probs)
        assert total is not None
        return torch.log(total.div_(self.n_passes).clamp_min_(_TINY))

    def extra_repr(self) -> str:
        return f"flips={self.flips}, scales={self.scales}, size_divisor={self.size_divisor}"


def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise ConfigError(f"{what} needs at least one value")
    return values


def build_tta(spec: str) -> dict[str, Any]:
    """Parse a TTA spec string into `TTAModel` keyword arguments.

    Parts joined by ``+``: ``flips`` (none,h,v,hv), ``flips=h,v`` (``none`` is always
    added), ``hflip``, ``vflip``, ``scales`` (0.75,1,1.25), ``scales=0.5,1,1.5``,
    ``size_divisor=32``; ``none`` alone means no augmentation. Examples: ``"flips"``,
    ``"flips+scales=0.75,1,1.25"``, ``"hflip+scales"``.
    """
    flips: list[str] = ["none"]
    scales: tuple[float, ...] = (1.0,)
    out: dict[str, Any] = {}
    parts = [p.strip() for p in str(spec).strip().lower().split("+") if p.strip()]
    if not parts:
        raise ConfigError("empty TTA spec; use e.g. 'flips' or 'flips+scales=0.75,1,1.25'")
    for part in parts:
        name, _, value = part.partition("=")
        name = name.strip()
        if name == "none" and not value:
            continue
        if name == "flips":
            chosen = value.split(",") if value else ALL_FLIPS
            flips += [f.strip() for f in chosen if f.strip()]
        elif name in ("hflip", "vflip") and not value:
            flips.append(name[0])
        elif name == "scales":
            scales = _floats(value, "scales") if value else DEFAULT_SCALES
        elif name == "size_divisor" and value:
            try:
                out["size_divisor"] = int(value)
            except ValueError:
                raise ConfigError(f"size_divisor must be an integer, got {value!r}") from None
        else:
            raise ConfigError(
                f"unknown TTA part {part!r} in {spec!r}; use flips[=h,v,hv], hflip, vflip, "
                "scales[=0.75,1,1.25], size_divisor=N or none, joined by '+'"
            )
    out["flips"] = tuple(dict.fromkeys(flips))  # unique, order kept
    out["scales"] = scales
    _check(out["flips"], scales, out.get("size_divisor", 32))
    return out


def tta_from_config(spec: str | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Validated `TTAModel` keyword arguments from a spec string or config mapping.

    ``None``, ``False``, ``""`` and ``"none"`` give ``None`` (no TTA); a string goes
    through `build_tta`; a mapping may hold ``flips``, ``scales``, ``size_divisor``
    (and ``enabled: false`` to switch it off), e.g. from a YAML ``tta:`` block.
    Use as ``TTAModel(model, **kwargs)``.
    """
    if (
        spec is None
        or spec is False
        or (isinstance(spec, str) and spec.strip().lower() in ("", "none", "off", "false"))
    ):
        return None
    if isinstance(spec, str):
        return build_tta(spec)
    if not isinstance(spec, Mapping):
        raise ConfigError(f"tta must be a string or a mapping, got {type(spec).__name__}")
    spec = dict(spec)
    if not spec.pop("enabled", True):
        return None
    unknown = set(spec) - {"flips", "scales", "size_divisor"}
    if unknown:
        raise ConfigError(f"unknown tta keys {sorted(unknown)}; use flips, scales, size_divisor")
    flips = spec.get("flips", ALL_FLIPS)
    flips = ALL_FLIPS if flips is True else ("none",) if flips is False else flips
    flips = (flips,) if isinstance(flips, str) else flips
    scales = spec.get("scales", (1.0,))
    scales = (scales,) if isinstance(scales, int | float) else tuple(scales)
    _check(tuple(flips), scales, spec.get("size_divisor", 32))
    return {
        "flips": tuple(flips),
        "scales": tuple(float(s) for s in scales),
        "size_divisor": int(spec.get("size_divisor", 32)),
    }
