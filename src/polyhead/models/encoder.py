"""Encoders: SMP/timm feature extractors with polyhead's weight loading rules.

``encoder_weights`` may be ``None`` (random init), a path to a local file (safetensors or a
torch state dict), or a named identifier such as ``"imagenet"``. A named identifier needs a
download; on a machine without network it fails at once with a message saying how to pass a
local file instead of retrying for minutes.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path

import segmentation_models_pytorch as smp
import torch
from torch import nn

from polyhead.errors import ConfigError, WeightsError
from polyhead.models.blocks.vit_encoder import register_vit_encoder

_WEIGHT_HOSTS = (("huggingface.co", 443), ("download.pytorch.org", 443))


def _looks_like_path(weights: str) -> bool:
    return (
        os.sep in weights
        or weights.startswith(".")
        or weights.endswith((".safetensors", ".pt", ".pth", ".bin", ".ckpt"))
    )


def _network_reachable(timeout: float = 3.0) -> bool:
    for host, port in _WEIGHT_HOSTS:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                return True
        except OSError:
            continue
    return False


def _offline_message(encoder_name: str, weights: str) -> str:
    return (
        f"encoder_weights={weights!r} for encoder {encoder_name!r} needs a download, and this "
        "machine cannot reach the weight servers. Download the weights elsewhere and pass the "
        "local file instead, e.g. model.encoder_weights=/path/to/encoder.safetensors (a "
        "safetensors file or a torch state dict of the encoder or of the whole timm model), "
        "or set model.encoder_weights=null for random initialisation."
    )


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from a safetensors file or a torch checkpoint (plain or Lightning)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"encoder weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path} does not hold a state dict (got {type(obj).__name__})")
    return dict(obj)


def _adapt_input_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Repeat/average a pretrained first-layer kernel to ``in_channels`` input bands."""
    src = weight.shape[1]
    if in_channels < src:
        return weight[:, :in_channels] * (src / in_channels)
    idx = torch.arange(in_channels) % src
    return weight[:, idx] * (src / in_channels)


def _normalise_key(key: str) -> str:
    for prefix in ("encoder.", "model."):
        key = key.removeprefix(prefix)
    return key.replace(".", "_")


def load_encoder_weights(encoder: nn.Module, path: str | os.PathLike) -> tuple[int, int]:
    """Load a local state dict into ``encoder``; returns (loaded, total) tensor counts.

    Accepts keys of the encoder itself, of a whole segmentation model (``encoder.`` prefix),
    or of a bare timm model for ``tu-`` encoders (``model.`` prefix added). First-layer kernels
    are adapted when the file was trained on a different number of input bands.
    """
    source = read_state_dict(path)
    target = encoder.state_dict()
    # timm's features_only wrapper flattens "stem.0" into "stem_0", and SMP wraps timm models
    # as "model.*": compare names with those differences removed.
    by_norm = {_normalise_key(k): k for k in target}
    best: dict[str, torch.Tensor] = {}
    for key, value in source.items():
        name = by_norm.get(_normalise_key(key))
        if name is not None:
            best[name] = value
    loaded: dict[str, torch.Tensor] = {}
    for key, value in best.items():
        if key not in target:
            continue
        want = target[key]
        if value.shape != want.shape:
            same_but_bands = (
                value.ndim == 4
                and value.shape[0] == want.shape[0]
                and value.shape[2:] == want.shape[2:]
            )
            if not same_but_bands:
                raise WeightsError(
                    f"{path}: tensor {key!r} has shape {tuple(value.shape)}, the encoder expects "
                    f"{tuple(want.shape)}; is the file for this encoder_name?"
                )
            value = _adapt_input_channels(value, want.shape[1])
        loaded[key] = value.to(want.dtype)
    if not loaded:
        raise WeightsError(
            f"{path}: none of its {len(source)} tensors match the encoder's parameter names "
            f"(e.g. {next(iter(target))!r}); is the file for this encoder_name?"
        )
    encoder.load_state_dict(loaded, strict=False)
    return len(loaded), len(target)


def build_encoder(
    encoder_name: str,
    in_channels: int = 3,
    encoder_depth: int = 5,
    encoder_weights: str | os.PathLike | bool | None = None,
    output_stride: int = 32,
) -> nn.Module:
    """Build an SMP encoder exposing ``out_channels``/``output_stride``.

    Names: SMP's own, ``tu-<timm name>`` (timm universal) and ``vit-<timm name>`` (plain
    ViTs, which SMP cannot wrap, through polyhead's feature-pyramid wrapper).
    """
    register_vit_encoder(encoder_name)
    local_file = None
    named = None
    if isinstance(encoder_weights, os.PathLike) or (
        isinstance(encoder_weights, str) and _looks_like_path(encoder_weights)
    ):
        local_file = encoder_weights
    elif encoder_weights not in (None, False):
        named = encoder_weights
        if not _network_reachable():
            raise WeightsError(_offline_message(encoder_name, str(named)))
    if named is not None and encoder_name.startswith("tu-"):
        named = True  # SMP's convention for timm encoders: the tag is part of the name
    try:
        encoder = smp.encoders.get_encoder(
            encoder_name,
            in_channels=in_channels,
            depth=encoder_depth,
            weights=named,
            output_stride=output_stride,
        )
    except KeyError as err:  # SMP: unknown encoder or weights name, with the valid ones listed
        raise ConfigError(str(err.args[0]) if err.args else str(err)) from err
    except (OSError, RuntimeError) as err:
        if named is None:
            raise
        raise WeightsError(
            f"{_offline_message(encoder_name, str(encoder_weights))} ({err})"
        ) from err
    if local_file is not None:
        load_encoder_weights(encoder, local_file)
    return encoder
