"""Heads: the named parts of a multi-head model and what each one predicts.

A head owns its decoder and output layer, the batch target it learns from (``target_key``),
its default loss, and the activation that turns its raw output into what a user gets:

- ``hard``: a class map learnt from integer masks (``targets["hard"]``); softmax.
- ``soft``: a class map learnt from per-class probability masks (``targets["soft"]``); softmax.
  Both divide their logits by their ``temperature`` buffer first (1.0 unless calibrated).
- ``uncertainty``: a per-pixel uncertainty map learnt from ``targets["uncertainty"]`` (the
  channels of its ``uncertainty_target``); its raw output lives in a transformed space
  (``transform``, optional sigmoid ``activation``) and `activate` maps it back to uncertainty.

Image-level heads pool one encoder stage (default the deepest) to a vector ``[B, n]``; their
target is ``targets[head name]`` (CSV columns, `polyhead.data.image_targets`):

- ``classification``: one of ``classes`` classes (int64 ``[B]``); cross-entropy; softmax.
- ``multilabel``: ``classes`` independent 0/1 labels (float ``[B, n]``); BCE; sigmoid.
- ``regression``: ``classes`` values (default 1; float ``[B, n]``); MSE on the output after its
  ``activation`` (``none``, ``sigmoid``, or ``softmax`` for fractions that sum to 1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from segmentation_models_pytorch.base import initialization as smp_init
from torch import nn

from polyhead.errors import ConfigError
from polyhead.losses.multihead import DEFAULT_LOSSES
from polyhead.losses.uncertainty import (
    ACTIVATIONS,
    TRANSFORMS,
    UncertaintyRegressionLoss,
    check_target,
    to_uncertainty,
    uncertainty_channels,
)
from polyhead.models.decoders import build_decoder

#: name of a class-map head's calibrated softmax temperature (a persistent buffer)
TEMPERATURE = "temperature"
#: options of an uncertainty head that are not decoder options
UNCERTAINTY_OPTIONS = ("uncertainty_target", "transform", "activation", "log_eps")


@dataclass
class HeadSpec:
    """How to build one head: decoder type, role, output channels and options."""

    decoder: str = "upernet"
    role: str = "hard"
    classes: int | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, name: str, cfg: HeadSpec | Mapping[str, Any] | str) -> HeadSpec:
        """Accept a HeadSpec, a decoder name, or a mapping ``{decoder, role, classes, **options}``."""
        if isinstance(cfg, HeadSpec):
            spec = cfg
        elif isinstance(cfg, str):
            spec = cls(decoder=cfg)
        elif isinstance(cfg, Mapping):
            cfg = dict(cfg)
            spec = cls(
                decoder=cfg.pop("decoder", "upernet"),
                role=cfg.pop("role", "hard"),
                classes=cfg.pop("classes", None),
                options=cfg,
            )
        else:
            raise ConfigError(f"heads.{name}: expected a mapping or a decoder name, got {cfg!r}")
        if spec.role not in HEAD_TYPES:
            raise ConfigError(
                f"heads.{name}.role is {spec.role!r}; valid roles: {list(HEAD_TYPES)}"
            )
        return spec

    def build(
        self, name: str, encoder_channels: Sequence[int], depth: int, stride: int, classes: int
    ) -> Head:
        """The head module for this spec on an encoder's feature channels."""
        return HEAD_TYPES[self.role](name, self, encoder_channels, depth, stride, classes)


class Head(nn.Module):
    """Decoder + output layer reading the shared encoder's feature list."""

    role: ClassVar[str]
    target_key: ClassVar[str]
    #: True for heads whose output is class logits (blended by ``"average"``)
    class_map: ClassVar[bool] = True
    #: True for heads with one output vector per image (``[B, n]``) instead of per pixel
    image_level: ClassVar[bool] = False

    def __init__(
        self,
        name: str,
        spec: HeadSpec,
        encoder_channels: Sequence[int],
        encoder_depth: int,
        output_stride: int,
        classes: int,
        decoder_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.classes = spec.classes if spec.classes is not None else classes
        options = spec.options if decoder_options is None else decoder_options
        self.decoder, self.segmentation_head = build_decoder(
            spec.decoder, encoder_channels, encoder_depth, output_stride, self.classes, **options
        )
        smp_init.initialize_decoder(self.decoder)
        smp_init.initialize_head(self.segmentation_head)
        if self.class_map:
            self.register_buffer("temperature", torch.ones(()))

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        """State dicts written before temperature calibration have no ``temperature``: 1.0."""
        key = prefix + TEMPERATURE
        if self.class_map and key not in state_dict:
            state_dict[key] = torch.ones(())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.segmentation_head(self.decoder(features))

    def select_target(self, targets: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """This head's target in a batch's ``targets`` (None when the batch has none)."""
        return targets.get(self.target_key)

    def default_loss(self) -> nn.Module:
        """The loss this head gets when the task names none for its target."""
        return DEFAULT_LOSSES[self.target_key]()

    def scores(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw output -> a class-map head's tempered logits ``raw / temperature`` (float32;
        the temperature is 1 until `polyhead calibrate` fits it): `activate` is their softmax."""
        logits = raw.float()
        t = self.temperature
        if t.device.type != "cpu" or float(t) != 1.0:  # on the CPU, skip a whole pass at T=1
            logits = logits / t
        return logits

    def activate(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw output -> what a user gets: class probabilities ``softmax(scores(raw))`` for a
        class-map head."""
        return torch.softmax(self.scores(raw), dim=1)


class HardHead(Head):
    """A class map learnt from integer class masks."""

    role = target_key = "hard"


class NetworkHead(HardHead):
    """A whole network from image to class logits, as a head that learns hard masks."""

    def __init__(self, network: nn.Module, classes: int | None = None) -> None:
        nn.Module.__init__(self)
        self.name, self.classes, self.network = "main", classes, network
        self.register_buffer("temperature", torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.network(x)
        if not isinstance(out, torch.Tensor):
            raise ConfigError(
                f"{type(self.network).__name__} returns {type(out).__name__}, not a logits "
                "tensor; give a network with one output (or a polyhead model)"
            )
        return out


class SoftHead(Head):
    """A class map learnt from per-class probability masks."""

    role = target_key = "soft"


class UncertaintyHead(Head):
    """A per-pixel uncertainty map; one channel unless ``classes`` says otherwise.

    Options (besides the decoder's): ``uncertainty_target`` (the map learnt: ``entropy``,
    ``std_winning``, ``mutual_information``, or ``std_per_class`` with ``classes: K``),
    ``transform`` (``sqrt``, ``log``, ``identity``: the space the head regresses in),
    ``activation`` (``none`` or ``sigmoid`` on the raw output) and ``log_eps``.
    """

    role = target_key = "uncertainty"
    class_map = False

    def __init__(
        self,
        name: str,
        spec: HeadSpec,
        encoder_channels: Sequence[int],
        encoder_depth: int,
        output_stride: int,
        classes: int,
    ) -> None:
        options = dict(spec.options)
        own = {k: options.pop(k) for k in UNCERTAINTY_OPTIONS if k in options}
        channels = spec.classes if spec.classes is not None else 1
        spec = HeadSpec(spec.decoder, spec.role, channels, options)
        super().__init__(
            name, spec, encoder_channels, encoder_depth, output_stride, classes, options
        )
        self.uncertainty_target = check_target(own.get("uncertainty_target", "entropy"))
        self.transform = own.get("transform", "sqrt")
        self.activation = own.get("activation", "none")
        self.log_eps = float(own.get("log_eps", 1e-3))
        if self.transform not in TRANSFORMS:
            raise ConfigError(
                f"heads.{name}.transform is {self.transform!r}; valid: {list(TRANSFORMS)}"
            )
        if self.activation not in ACTIVATIONS:
            raise ConfigError(
                f"heads.{name}.activation is {self.activation!r}; valid: {list(ACTIVATIONS)}"
            )

    def select_target(self, targets: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        stack = targets.get(self.target_key)
        if stack is None or stack.shape[1] == self.classes:
            return stack
        n_classes = stack.shape[1] - 3  # a [B, 3 + K, H, W] teacher stack
        return stack[:, uncertainty_channels(self.uncertainty_target, n_classes)]

    def default_loss(self) -> nn.Module:
        if self.activation != "none":
            raise ConfigError(
                f"head {self.name!r} has activation {self.activation!r}: name its loss "
                "(e.g. ThreadRecipeLoss(sigmoid=True)); the default regression loss has none"
            )
        return UncertaintyRegressionLoss(transform=self.transform, log_eps=self.log_eps)

    def activate(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw output -> uncertainty (>= 0) in the units of ``uncertainty_target``."""
        return to_uncertainty(raw, self.transform, self.activation, self.log_eps)


#: options of an image-level head
IMAGE_OPTIONS = ("stage", "dropout", "activation")
REGRESSION_ACTIVATIONS = ("none", "sigmoid", "softmax")


class ImageHead(Head):
    """Global average pooling of one encoder stage, dropout, a linear layer: ``[B, n]``.

    Options: ``stage`` (index into the encoder's feature list, default -1: the deepest),
    ``dropout`` (default 0), ``classes`` (outputs; required except for regression, default 1).
    The target key is the head's own name.
    """

    class_map = False
    image_level = True
    needs_classes: ClassVar[bool] = True

    def __init__(
        self,
        name: str,
        spec: HeadSpec,
        encoder_channels: Sequence[int],
        encoder_depth: int,
        output_stride: int,
        classes: int,
    ) -> None:
        nn.Module.__init__(self)
        options = dict(spec.options)
        unknown = sorted(set(options) - set(IMAGE_OPTIONS))
        if unknown:
            raise ConfigError(
                f"heads.{name}: {unknown} are not options of a {self.role} head; "
                f"valid: {list(IMAGE_OPTIONS)}, classes"
            )
        if spec.classes is None and self.needs_classes:
            raise ConfigError(f"heads.{name}: a {self.role} head needs classes (its outputs)")
        self.name, self.target_key = name, name
        self.classes = int(spec.classes if spec.classes is not None else 1)
        self.stage = int(options.get("stage", -1))
        n_stages = len(encoder_channels)
        if not -n_stages <= self.stage < n_stages:
            raise ConfigError(
                f"heads.{name}.stage is {self.stage}; the encoder has {n_stages} feature maps"
            )
        self.activation = str(options.get("activation", "none"))
        if self.activation not in REGRESSION_ACTIVATIONS:
            raise ConfigError(
                f"heads.{name}.activation is {self.activation!r}; valid: "
                f"{list(REGRESSION_ACTIVATIONS)}"
            )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dropout = nn.Dropout(float(options.get("dropout", 0.0)))
        self.linear = nn.Linear(encoder_channels[self.stage], self.classes)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.linear(self.dropout(self.pool(features[self.stage])))

    def select_target(self, targets: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        return targets.get(self.target_key)


class ClassificationHead(ImageHead):
    """One class per image: logits ``[B, classes]``, cross-entropy, softmax."""

    role = "classification"

    def default_loss(self) -> nn.Module:
        return nn.CrossEntropyLoss()

    def activate(self, raw: torch.Tensor) -> torch.Tensor:
        return torch.softmax(raw.float(), dim=1)


class MultiLabelHead(ImageHead):
    """Independent 0/1 labels per image: logits ``[B, n]``, BCE with logits, sigmoid."""

    role = "multilabel"

    def default_loss(self) -> nn.Module:
        return nn.BCEWithLogitsLoss()

    def activate(self, raw: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(raw.float())


class RegressionHead(ImageHead):
    """``classes`` values per image (default 1); its ``activation`` is part of ``forward``,
    so the raw output is the value; MSE."""

    role = "regression"
    needs_classes = False

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        out = super().forward(features)
        if self.activation == "sigmoid":
            return torch.sigmoid(out)
        if self.activation == "softmax":
            return torch.softmax(out, dim=1)
        return out

    def default_loss(self) -> nn.Module:
        return nn.MSELoss()

    def activate(self, raw: torch.Tensor) -> torch.Tensor:
        return raw.float()


HEAD_TYPES: dict[str, type[Head]] = {
    "hard": HardHead,
    "soft": SoftHead,
    "uncertainty": UncertaintyHead,
    "classification": ClassificationHead,
    "multilabel": MultiLabelHead,
    "regression": RegressionHead,
}


def uncertainty_at_class(uncertainty: torch.Tensor, class_scores: torch.Tensor) -> torch.Tensor:
    """One uncertainty map ``[B, 1, H, W]``: a per-class map ``[B, K, H, W]`` is read at the
    arg-max class of ``class_scores`` (logits or probabilities); a one-channel map is kept."""
    if uncertainty.shape[1] == 1:
        return uncertainty
    return uncertainty.gather(1, class_scores.argmax(dim=1, keepdim=True))
