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


def _as_transform(item: Any, where: str) -> Any:
    if isinstance(item, Mapping):
        raise ConfigError(
            f"{where}: got the config {dict(item)}; pass a built transform (the application "
            "layer, polyhead.config.build, instantiates configs)"
        )
    if not isinstance(item, (A.BasicTransform, A.BaseCompose)):
        raise ConfigError(
            f"{where}: expected an albumentations transform, got {type(item).__name__}"
        )
    return item


def _with_soft_target(compose: A.Compose) -> A.Compose:
    compose = copy.deepcopy(compose)  # never mutate the caller's object
    if SOFT_TARGET not in compose.additional_targets:
        compose.add_targets(ADDITIONAL_TARGETS)
    return compose


def build_augmentations(augmentation_list: Any) -> A.Compose | None:
    """Turn an augmentation spec into one ``A.Compose`` that also moves a ``soft_mask`` target.

    Accepts None, an ``A.Compose``, a single transform or a list of built transforms (configs
    are instantiated by the application layer first). Returns None when there is nothing to
    apply.
    """
    if augmentation_list is None:
        return None
    if isinstance(augmentation_list, (Mapping, A.BasicTransform, A.BaseCompose)):
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
