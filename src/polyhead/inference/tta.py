"""Test-time augmentation: flips, 90-degree rotations (D4), scales, MC-dropout; and inverses.

`Augmentation` is one view (a flip, then a quarter turn, at a scale) with ``apply`` and
``undo``; `augmentations` lists every flip and rotation at every scale (``d4``: the 8 elements
of the dihedral group). `mc_dropout` runs a model's dropout layers in train mode (everything
else in eval) for Monte-Carlo dropout samples. `polyhead.inference.Predictor` averages each head's
activated maps (probabilities, uncertainty) over the views; `TTAModel` does the same for a
plain logits network and returns the LOG of the averaged probabilities, so a downstream
``softmax`` gives back the averaged probabilities (``softmax(log p) = p``, up to rounding).
Teacher ensembles take their flip members from here too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from polyhead.errors import ConfigError

FLIPS: dict[str, tuple[int, ...]] = {"none": (), "h": (-1,), "v": (-2,), "hv": (-2, -1)}
ALL_FLIPS = ("none", "h", "v", "hv")
DEFAULT_SCALES = (0.75, 1.0, 1.25)
#: the dihedral group D4 as flips x quarter turns (v = h then 2 turns, hv = 2 turns)
D4_FLIPS, D4_ROTATIONS = ("none", "h"), (0, 1, 2, 3)
DEFAULT_MC_SAMPLES = 8
_TINY = torch.finfo(torch.float32).tiny


def _check(
    flips: Sequence[str],
    scales: Sequence[float],
    size_divisor: int,
    rotations: Sequence[int] = (0,),
    mc_dropout: int = 0,
) -> None:
    if not flips or any(f not in FLIPS for f in flips):
        raise ConfigError(f"flips must be a non-empty subset of {tuple(FLIPS)}, got {flips!r}")
    if not rotations or any(r not in D4_ROTATIONS for r in rotations):
        raise ConfigError(
            f"rotations must be a non-empty subset of {D4_ROTATIONS} (quarter turns), "
            f"got {rotations!r}"
        )
    if type(mc_dropout) is not int or mc_dropout == 1 or mc_dropout < 0:
        raise ConfigError(
            f"mc_dropout must be 0 (off) or a number of samples >= 2, got {mc_dropout!r}"
        )
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
    """One test-time view of a batch: a flip (``FLIPS`` key), then ``rot`` quarter turns
    (``torch.rot90`` over the last two dims), at a scale; and its inverse.

    A turn of a non-square ``h x w`` batch gives ``w x h``: the model must take that shape
    (fully convolutional models do); ``undo`` turns the output back to ``h x w``.
    """

    flip: str = "none"
    scale: float = 1.0
    size_divisor: int = 32
    rot: int = 0

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
        x = torch.flip(x, dims) if dims else x
        return torch.rot90(x, self.rot, dims=(-2, -1)) if self.rot % 4 else x

    def undo(self, y: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """A per-pixel output of the augmented batch, back in the input's frame ``size``."""
        if self.rot % 4:
            y = torch.rot90(y, -self.rot, dims=(-2, -1))
        dims = FLIPS[self.flip]
        if dims:
            y = torch.flip(y, dims)
        if self.scale != 1.0 and tuple(y.shape[-2:]) != tuple(size):
            y = F.interpolate(y.float(), size=size, mode="bilinear", align_corners=False)
        return y


def augmentations(
    flips: Sequence[str] = ALL_FLIPS,
    scales: Sequence[float] = (1.0,),
    size_divisor: int = 32,
    rotations: Sequence[int] = (0,),
) -> list[Augmentation]:
    """Every flip and quarter turn at every scale (validated); ``flips=("none", "h")`` with
    ``rotations=(0, 1, 2, 3)`` is D4."""
    _check(flips, scales, size_divisor, rotations)
    return [
        Augmentation(f, float(s), int(size_divisor), int(r))
        for s in scales
        for r in rotations
        for f in flips
    ]


def dropout_layers(model: nn.Module) -> list[nn.Module]:
    """The dropout layers (``nn.Dropout*`` with p > 0, timm's ``DropPath``) of ``model``."""
    return [
        m
        for m in model.modules()
        if (isinstance(m, nn.modules.dropout._DropoutNd) or type(m).__name__ == "DropPath")
        and float(getattr(m, "p", getattr(m, "drop_prob", 0.0)) or 0.0) > 0.0
    ]


def check_mc_dropout(model: nn.Module, name: str | None = None) -> list[nn.Module]:
    """``model``'s dropout layers; `ConfigError` naming the model when it has none."""
    layers = dropout_layers(model)
    if not layers:
        raise ConfigError(
            f"mc-dropout: the model {name or type(model).__name__} has no dropout layer with "
            "p > 0, so every sample would be the same; use --tta d4 (or flips) instead"
        )
    return layers


@contextlib.contextmanager
def mc_dropout(
    layers: Sequence[nn.Module], seed: int | None = None, device: torch.device | None = None
) -> Iterator[None]:
    """Within the block ``layers`` sample (train mode; the rest of the model keeps its mode,
    so batch norm stays in eval); their modes are restored on leaving. With ``seed`` the
    samples come from a forked RNG seeded with it (the global RNG is untouched)."""
    modes = [layer.training for layer in layers]
    with contextlib.ExitStack() as stack:
        if seed is not None:
            cuda = device is not None and device.type == "cuda"
            stack.enter_context(torch.random.fork_rng(devices=[device] if cuda else []))
            torch.manual_seed(seed)
        for layer in layers:
            layer.train()
        try:
            yield
        finally:
            for layer, mode in zip(layers, modes, strict=True):
                layer.train(mode)


class MCSampler:
    """Monte-Carlo dropout over a model's ``layers``: `samples` yields once per stochastic
    pass (dropout in train mode). With ``seed``, call ``i`` of `samples` is seeded with
    ``seed + i``: reproducible, yet different masks for each batch of tiles."""

    def __init__(self, layers: Sequence[nn.Module], n_samples: int, seed: int | None = None):
        self.layers, self.n_samples, self.seed = list(layers), int(n_samples), seed
        self.calls = 0

    def samples(self, device: torch.device | None = None) -> Iterator[int]:
        """Yield ``0 .. n_samples - 1`` with the dropout layers sampling; once when off."""
        if not self.n_samples:
            yield 0
            return
        seed = None if self.seed is None else self.seed + self.calls
        self.calls += 1
        with mc_dropout(self.layers, seed, device):
            yield from range(self.n_samples)


class TTAModel(nn.Module):
    """Average the softmax of a logits ``model`` over test-time views; return log-probabilities.

    The same views as `polyhead.inference.Predictor` with ``tta=``, for any network that
    returns class logits ``[B, K, h, w]``. ``flips``: any of ``"none"`` (identity), ``"h"``
    (left-right), ``"v"`` (up-down), ``"hv"`` (both). ``rotations``: quarter turns (0-3)
    after each flip. ``scales``: input resize factors (see `Augmentation`); the logits are
    resized back (bilinear) before the softmax. ``mc_dropout``: that many stochastic passes
    per view with the dropout layers sampling (``seed``: see `MCSampler`). The output is
    ``log(mean_t softmax(logits_t))``: feed it to anything that applies a softmax and you get
    the averaged probabilities; it is not a calibrated logit in any other sense.
    """

    def __init__(
        self,
        model: Any,
        flips: Sequence[str] = ALL_FLIPS,
        scales: Sequence[float] = (1.0,),
        size_divisor: int = 32,
        rotations: Sequence[int] = (0,),
        mc_dropout: int = 0,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        _check(flips, scales, size_divisor, rotations, mc_dropout)
        self.views = augmentations(flips, scales, size_divisor, rotations)
        self.flips, self.scales = tuple(flips), tuple(float(s) for s in scales)
        self.size_divisor, self.rotations = int(size_divisor), tuple(rotations)
        layers = check_mc_dropout(model) if mc_dropout else []
        self.sampler = MCSampler(layers, mc_dropout, seed)

    @property
    def n_passes(self) -> int:
        """Model calls per input batch."""
        return len(self.views) * max(1, self.sampler.n_samples)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log of the averaged probabilities ``[B, K, h, w]`` for ``x [B, C, h, w]``."""
        size = tuple(x.shape[-2:])
        total: torch.Tensor | None = None
        for _ in self.sampler.samples(x.device):
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
        return (
            f"flips={self.flips}, rotations={self.rotations}, scales={self.scales}, "
            f"size_divisor={self.size_divisor}, mc_dropout={self.sampler.n_samples}"
        )


def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise ConfigError(f"{what} needs at least one value")
    return values


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{what} must be an integer, got {text!r}") from None


_PARTS = (
    "flips[=h,v,hv], hflip, vflip, d4, scales[=0.75,1,1.25], mc-dropout[=N], seed=N, "
    "size_divisor=N or none, joined by '+'"
)


def build_tta(spec: str) -> dict[str, Any]:
    """Parse a TTA spec string into `TTAModel` keyword arguments.

    Parts joined by ``+``: ``flips`` (none,h,v,hv), ``flips=h,v`` (``none`` is always
    added), ``hflip``, ``vflip``, ``d4`` (the 8 flips and quarter turns of the square; not
    with other flips), ``scales`` (0.75,1,1.25), ``scales=0.5,1,1.5``, ``mc-dropout=N``
    (N >= 2 Monte-Carlo dropout samples per view, default 8), ``seed=N`` (of those samples),
    ``size_divisor=32``; ``none`` alone means no augmentation. Examples: ``"flips"``,
    ``"flips+scales=0.75,1,1.25"``, ``"d4"``, ``"mc-dropout=8"``, ``"d4+mc-dropout=4"``.
    """
    flips: list[str] = ["none"]
    scales: tuple[float, ...] = (1.0,)
    out: dict[str, Any] = {}
    parts = [p.strip() for p in str(spec).strip().lower().split("+") if p.strip()]
    if not parts:
        raise ConfigError("empty TTA spec; use e.g. 'flips', 'd4' or 'mc-dropout=8'")
    for part in parts:
        name, _, value = part.partition("=")
        name = name.strip().replace("_", "-")
        if name == "none" and not value:
            continue
        if name == "flips":
            chosen = value.split(",") if value else ALL_FLIPS
            flips += [f.strip() for f in chosen if f.strip()]
        elif name in ("hflip", "vflip") and not value:
            flips.append(name[0])
        elif name == "d4" and not value:
            out["rotations"] = D4_ROTATIONS
        elif name == "scales":
            scales = _floats(value, "scales") if value else DEFAULT_SCALES
        elif name == "mc-dropout":
            out["mc_dropout"] = _int(value, "mc-dropout") if value else DEFAULT_MC_SAMPLES
        elif name == "seed" and value:
            out["seed"] = _int(value, "seed")
        elif name == "size-divisor" and value:
            out["size_divisor"] = _int(value, "size_divisor")
        else:
            raise ConfigError(f"unknown TTA part {part!r} in {spec!r}; use {_PARTS}")
    if "rotations" in out:
        if len(flips) > 1:
            raise ConfigError(f"{spec!r}: d4 already holds every flip; drop the flip parts")
        flips.append("h")
    out["flips"] = tuple(dict.fromkeys(flips))  # unique, order kept
    out["scales"] = scales
    if "seed" in out and "mc_dropout" not in out:
        raise ConfigError(f"{spec!r}: seed is the seed of mc-dropout samples; add mc-dropout=N")
    _check(
        out["flips"],
        scales,
        out.get("size_divisor", 32),
        out.get("rotations", (0,)),
        out.get("mc_dropout", 0),
    )
    return out


_KEYS = ("flips", "rotations", "scales", "size_divisor", "mc_dropout", "seed")


def tta_from_config(spec: str | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Validated `TTAModel` keyword arguments from a spec string or config mapping.

    ``None``, ``False``, ``""`` and ``"none"`` give ``None`` (no TTA); a string goes
    through `build_tta`; a mapping may hold ``flips``, ``scales``, ``size_divisor``,
    ``rotations`` (quarter turns, ``[0, 1, 2, 3]`` with flips ``[none, h]`` is D4),
    ``mc_dropout`` (samples) and ``seed`` (and ``enabled: false`` to switch it off), e.g.
    from a YAML ``tta:`` block. Use as ``TTAModel(model, **kwargs)``.
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
    unknown = set(spec) - set(_KEYS)
    if unknown:
        raise ConfigError(f"unknown tta keys {sorted(unknown)}; use {', '.join(_KEYS)}")
    flips = spec.get("flips", ALL_FLIPS)
    flips = ALL_FLIPS if flips is True else ("none",) if flips is False else flips
    flips = (flips,) if isinstance(flips, str) else flips
    scales = spec.get("scales", (1.0,))
    scales = (scales,) if isinstance(scales, int | float) else tuple(scales)
    rotations = spec.get("rotations", (0,))
    rotations = (rotations,) if isinstance(rotations, int) else tuple(rotations)
    _check(tuple(flips), scales, spec.get("size_divisor", 32), rotations, spec.get("mc_dropout", 0))
    out: dict[str, Any] = {
        "flips": tuple(flips),
        "scales": tuple(float(s) for s in scales),
        "size_divisor": int(spec.get("size_divisor", 32)),
    }
    if "rotations" in spec:
        out["rotations"] = rotations
    if spec.get("mc_dropout"):
        out["mc_dropout"] = spec["mc_dropout"]
    if spec.get("seed") is not None:
        out["seed"] = _int(str(spec["seed"]), "seed")
    return out
