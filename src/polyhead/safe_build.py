"""Application layer: turn a stored config into objects through an allow-list polyhead controls.

A checkpoint (or a shared model spec) stores its model as plain data: a tree of dicts and lists
whose ``_target_`` entries name classes. Hydra would call whatever such a string names; here a
``_target_`` is built only when it is on an allow-list (`MODEL_TARGETS`, `NORMALIZE_TARGETS`).
The whole tree is checked before anything is built (or any module outside the allow-list is
imported), and a refusal is one `ConfigError` line naming the config key, the ``_target_`` and
what is allowed.

Hydra's special keys: ``_args_`` (positional arguments, checked and built like the rest),
``_convert_`` (ignored: containers are always plain), ``_recursive_: true`` and
``_partial_: false`` (the defaults) are accepted; ``_recursive_: false`` and ``_partial_: true``
are refused (they hand unbuilt configs or callables to code). Seed-project aliases
(`polyhead.compat`) are rewritten to polyhead's paths first.

Options that fetch weights are switched off everywhere in the tree (a checkpoint holds every
weight): ``encoder_weights`` becomes None and ``pretrained`` False; ``checkpoint_path`` and
``pretrained_cfg_overlay`` (files a timm model would read) are refused.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from polyhead.compat import resolve_target
from polyhead.errors import ConfigError

HYDRA_KEYS = frozenset({"_target_", "_args_", "_convert_", "_recursive_", "_partial_"})
#: keys forced to these values at every level of a stored model config
NO_FETCH = {"encoder_weights": None, "pretrained": False}
#: keys that would make a stored model config read other files
REFUSED_KEYS = frozenset({"checkpoint_path", "pretrained_cfg_overlay"})


@dataclass(frozen=True)
class Rule:
    """Targets under one of ``packages`` whose object passes ``accepts``."""

    what: str
    packages: tuple[str, ...]
    accepts: Callable[[Any], bool]

    def covers(self, module: str) -> bool:
        return any(module == p or module.startswith(p + ".") for p in self.packages)


def _module_class(obj: Any) -> bool:
    return inspect.isclass(obj) and issubclass(obj, nn.Module)


def _normalize_class(obj: Any) -> bool:
    import albumentations as A

    return obj is A.Normalize


MODEL_TARGETS: tuple[Rule, ...] = (
    Rule("polyhead.models.* classes", ("polyhead.models",), _module_class),
    Rule("torch.nn modules", ("torch.nn",), _module_class),
    Rule(
        "segmentation_models_pytorch model/encoder/decoder classes",
        ("segmentation_models_pytorch",),
        _module_class,
    ),
)
NORMALIZE_TARGETS: tuple[Rule, ...] = (
    Rule("albumentations.Normalize", ("albumentations",), _normalize_class),
)


def describe(rules: tuple[Rule, ...]) -> str:
    """The allow-list in words, for error messages."""
    return "; ".join(r.what for r in rules)


def _import(target: str, rules: tuple[Rule, ...]) -> Any:
    """The object a dotted path names (longest importable allowed module first), or None."""
    parts = target.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module = ".".join(parts[:cut])
        if not any(rule.covers(module) for rule in rules):
            return None
        try:
            obj: Any = importlib.import_module(module)
        except ImportError:
            continue
        try:
            for name in parts[cut:]:
                obj = getattr(obj, name)
        except AttributeError:
            return None
        return obj
    return None


def resolve(target: Any, key: str, rules: tuple[Rule, ...]) -> Any:
    """The class ``target`` names, when the allow-list ``rules`` permits it; else ConfigError.

    Nothing outside the allow-list's packages is imported.
    """
    refused = f"{key}._target_: {target!r} is not allowed when loading a stored model"
    allowed = f"allowed: {describe(rules)}"
    if not isinstance(target, str) or not target:
        raise ConfigError(f"{refused} (not a dotted class path); {allowed}")
    try:
        target = resolve_target(target) or target
    except ConfigError as err:  # a seed-project path with no polyhead equivalent
        raise ConfigError(f"{key}._target_: {err}") from None
    parts = target.split(".")
    if any(not p.isidentifier() or p.startswith("_") for p in parts):
        raise ConfigError(f"{refused}; {allowed}")
    prefixes = [".".join(parts[:cut]) for cut in range(1, len(parts))]
    if not any(rule.covers(p) for rule in rules for p in prefixes):
        raise ConfigError(f"{refused}; {allowed}")
    obj = _import(target, rules)
    if obj is None:
        raise ConfigError(f"{key}._target_: cannot import {target!r}; {allowed}")
    home = getattr(obj, "__module__", None) or ""
    if not any(rule.covers(home) and rule.accepts(obj) for rule in rules):
        raise ConfigError(f"{refused} (only classes of the allow-list); {allowed}")
    return obj


def _special(node: Mapping[str, Any], key: str) -> None:
    if node.get("_partial_", False) is not False:
        raise ConfigError(f"{key}._partial_: refused when loading a stored model (build objects)")
    if node.get("_recursive_", True) is not True:
        raise ConfigError(f"{key}._recursive_: refused when loading a stored model")
    if "_args_" in node and not isinstance(node["_args_"], list | tuple):
        raise ConfigError(f"{key}._args_ must be a list")


def check(node: Any, key: str, rules: tuple[Rule, ...]) -> dict[str, Any]:
    """Check every ``_target_`` in ``node`` (building nothing); returns ``{key: class}``."""
    found: dict[str, Any] = {}

    def walk(value: Any, where: str) -> None:
        if isinstance(value, Mapping):
            if "_target_" in value:
                _special(value, where)
                found[where] = resolve(value["_target_"], where, rules)
            for k, v in value.items():
                if k in REFUSED_KEYS:
                    raise ConfigError(f"{where}.{k}: refused when loading a stored model")
                if k not in HYDRA_KEYS or k == "_args_":
                    walk(v, f"{where}.{k}")
        elif isinstance(value, list | tuple):
            for i, v in enumerate(value):
                walk(v, f"{where}[{i}]")

    walk(node, key)
    return found


def without_fetch(node: Any) -> Any:
    """A copy of a model config with the `NO_FETCH` keys set at every level."""
    if isinstance(node, Mapping):
        return {k: NO_FETCH[k] if k in NO_FETCH else without_fetch(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [without_fetch(v) for v in node]
    return node


def build(node: Any, key: str, rules: tuple[Rule, ...]) -> Any:
    """Check ``node`` against ``rules`` (see `check`), then build it bottom-up."""
    classes = check(node, key, rules)

    def make(value: Any, where: str) -> Any:
        if isinstance(value, Mapping):
            if "_target_" not in value:
                return {k: make(v, f"{where}.{k}") for k, v in value.items()}
            args = [make(v, f"{where}._args_[{i}]") for i, v in enumerate(value.get("_args_", []))]
            kwargs = {k: make(v, f"{where}.{k}") for k, v in value.items() if k not in HYDRA_KEYS}
            return classes[where](*args, **kwargs)
        if isinstance(value, list | tuple):
            return [make(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return value

    return make(node, key)


def build_model(cfg: Mapping[str, Any], key: str = "model") -> nn.Module:
    """A stored model config built through `MODEL_TARGETS`, without fetching weights."""
    if not isinstance(cfg, Mapping) or "_target_" not in cfg:
        raise ConfigError(f"{key}: a stored model config needs a _target_")
    try:
        return build(without_fetch(cfg), key, MODEL_TARGETS)
    except TypeError as err:
        raise ConfigError(f"{key}: {err}") from err
