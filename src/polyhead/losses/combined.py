"""Weighted sums of losses, configurable from YAML."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from polyhead.errors import ConfigError

_ABSENT = object()


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower().removesuffix("_loss") or "loss"


def _parse_entry(where: str, entry: Any) -> tuple[nn.Module, float, str | None]:
    """``module`` | ``(module, weight)`` | ``{loss: module, weight: w, name: n}``."""
    if isinstance(entry, nn.Module):
        return entry, 1.0, None
    if isinstance(entry, Mapping):
        unknown = set(entry) - {"loss", "weight", "name"}
        if "loss" not in entry or unknown:
            raise ConfigError(
                f"{where}: a loss entry is a module, (loss, weight) or {{loss, weight, name}}; "
                f"got keys {sorted(map(str, entry))}"
            )
        loss, weight, name = entry["loss"], entry.get("weight", 1.0), entry.get("name")
    elif isinstance(entry, Sequence) and not isinstance(entry, str) and len(entry) == 2:
        (loss, weight), name = entry, None
    else:
        raise ConfigError(
            f"{where}: expected a loss module, (loss, weight) or a mapping, got {entry!r}"
        )
    if not isinstance(loss, nn.Module):
        raise ConfigError(
            f"{where}.loss must be an instantiated loss module (in YAML, give it a _target_), "
            f"got {type(loss).__name__}"
        )
    try:
        weight = float(weight)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}.weight must be a number, got {weight!r}") from err
    return loss, weight, None if name is None else str(name)


class CombinedLoss(nn.Module):
    """Weighted sum of losses that share the call ``loss(logits, target)``.

    Args:
        losses: a list of entries, or a mapping ``{name: entry}``; an entry is a loss module
            (weight 1), a pair ``(loss, weight)`` or a mapping ``{loss, weight, name}``. List
            entries without a name are named after their class (``dice``, ``focal``, ...).

    After each call, :attr:`last_parts` holds every part's unweighted value (detached), for
    logging. From Hydra YAML::

        _target_: polyhead.losses.CombinedLoss
        losses:
          ce: {loss: {_target_: polyhead.losses.CrossEntropyLoss}, weight: 1.0}
          dice: {loss: {_target_: polyhead.losses.DiceLoss}, weight: 0.5}
    """

    def __init__(self, losses: Sequence[Any] | Mapping[str, Any]) -> None:
        super().__init__()
        if isinstance(losses, Mapping):
            items = [(str(k), *_parse_entry(f"losses.{k}", v)) for k, v in losses.items()]
            parsed = [(loss, w, key) for key, loss, w, _ in items]
        elif isinstance(losses, Sequence) and not isinstance(losses, str):
            parsed = [_parse_entry(f"losses[{i}]", v) for i, v in enumerate(losses)]
        else:
            raise ConfigError(f"losses must be a list or a mapping, got {type(losses).__name__}")
        if not parsed:
            raise ConfigError("CombinedLoss needs at least one loss")
        modules: dict[str, nn.Module] = {}
        self.weights: dict[str, float] = {}
        for loss, weight, name in parsed:
            base = name or _snake(type(loss).__name__)
            key, n = base, 2
            while key in modules:
                key, n = f"{base}_{n}", n + 1
            modules[key], self.weights[key] = loss, weight
        self.losses = nn.ModuleDict(modules)
        self.last_parts: dict[str, torch.Tensor] = {}

    @property
    def ignore_index(self) -> int | None:
        """The parts' common ``ignore_index`` (None if they disagree); setting it sets all."""
        values = {getattr(m, "ignore_index", _ABSENT) for m in self.losses.values()} - {_ABSENT}
        if not values:
            raise AttributeError("no part of this CombinedLoss has an ignore_index")
        return values.pop() if len(values) == 1 else None

    @ignore_index.setter
    def ignore_index(self, value: int | None) -> None:
        for module in self.losses.values():
            if hasattr(module, "ignore_index"):
                module.ignore_index = value

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Return ``sum_i weight_i * loss_i(*args, **kwargs)``."""
        total: torch.Tensor | None = None
        parts: dict[str, torch.Tensor] = {}
        for name, loss in self.losses.items():
            value = loss(*args, **kwargs)
            parts[name] = value.detach()
            term = self.weights[name] * value
            total = term if total is None else total + term
        self.last_parts = parts
        assert total is not None
        return total
