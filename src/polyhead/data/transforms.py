"""Albumentations pipelines for image + hard mask + soft mask."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

import albumentations as A

from polyhead.errors import ConfigError

# The soft mask (H, W, K) rides along as a second "mask" target: geometric
# transforms move it exactly like the hard mask, pixel-level ones (Normalize,
# colour jitter) leave it alone.
SOFT_TARGET = "soft_mask"
ADDITIONAL_TARGETS = {SOFT_TARGET: "mask"}


def _instantiate(spec: Any, where: str) -> Any:
    from hydra.utils import instantiate

    try:
        return instantiate(spec)
    except Exception as err:
        target = spec.get("_target_") if isinstance(spec, Mapping) else spec
        raise ConfigError(f"{where}: cannot instantiate {target!r}: {err}") from err


def _as_transform(item: Any, where: str) -> Any:
    if isinstance(item, Mapping) or _is_dictconfig(item):
        if "_target_" not in item:
            raise ConfigError(
                f"{where}: a dict augmentation needs a _target_ key, got {dict(item)}"
            )
        item = _instantiate(item, where)
    if not isinstance(item, (A.BasicTransform, A.BaseCompose)):
        raise ConfigError(
            f"{where}: expected an albumentations transform or a dict with _target_, "
            f"got {type(item).__name__}"
        )
    return item


def _is_dictconfig(obj: Any) -> bool:
    from omegaconf import DictConfig

    return isinstance(obj, DictConfig)


def _with_soft_target(compose: A.Compose) -> A.Compose:
    compose = copy.deepcopy(compose)  # never mutate the caller's object
    if SOFT_TARGET not in compose.additional_targets:
        compose.add_targets(ADDITIONAL_TARGETS)
    return compose


def build_augmentations(augmentation_list: Any) -> A.Compose | None:
    """Turn an augmentation spec into one ``A.Compose`` that also moves a ``soft_mask`` target.

    Accepts None, an ``A.Compose``, a single transform, a dict with ``_target_``,
    or a list mixing transforms and ``_target_`` dicts (instantiated with Hydra).
    Returns None when there is nothing to apply.
    """
    if augmentation_list is None:
        return None
    if isinstance(augmentation_list, (Mapping, A.BasicTransform, A.BaseCompose)) or _is_dictconfig(
        augmentation_list
    ):
        augmentation_list = [augmentation_list]
    if isinstance(augmentation_list, (str, bytes)) or not isinstance(augmentation_list, Iterable):
        raise ConfigError(
            f"augmentation_list must be a list of transforms, got {type(augmentation_list).__name__}"
        )
    transforms = [
        _as_transform(item, f"augmentation_list[{i}]") for i, item in enumerate(augmentation_list)
    ]
    if not transforms:
        return None
    if len(transforms) == 1 and type(transforms[0]) is A.Compose:
        return _with_soft_target(transforms[0])
    return A.Compose(transforms, additional_targets=dict(ADDITIONAL_TARGETS))


def iter_transforms(transform: Any) -> Iterable[Any]:
    """Yield ``transform`` and every transform nested in it (Compose, OneOf, ...)."""
    yield transform
    for child in getattr(transform, "transforms", None) or []:
        yield from iter_transforms(child)


def mask_is_transposed(compose: A.Compose | None) -> bool:
    """True when a ``ToTensorV2(transpose_mask=True)`` in the pipeline turns HWK masks into KHW."""
    if compose is None:
        return False
    from albumentations.pytorch import ToTensorV2

    return any(
        isinstance(t, ToTensorV2) and getattr(t, "transpose_mask", False)
        for t in iter_transforms(compose)
    )
