"""Decoder factory: ``name -> (decoder, segmentation head)`` built on any encoder's channels.

Each builder wires an SMP decoder exactly as the matching SMP model does, so a head built
here with the same weights gives the same output as the SMP model (tested for UPerNet).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from segmentation_models_pytorch.base import SegmentationHead
from segmentation_models_pytorch.decoders.deeplabv3.decoder import DeepLabV3PlusDecoder
from segmentation_models_pytorch.decoders.fpn.decoder import FPNDecoder
from segmentation_models_pytorch.decoders.pspnet.decoder import PSPDecoder
from segmentation_models_pytorch.decoders.segformer.decoder import SegformerDecoder
from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder
from segmentation_models_pytorch.decoders.upernet.decoder import UPerNetDecoder
from torch import nn

from polyhead.errors import ConfigError
from polyhead.models.blocks import (
    AttentionUNetDecoder,
    FCNDecoder,
    PanopticFPNDecoder,
    SETRPUPDecoder,
    UpsampleHead,
    level_stride,
)

DecoderBuilder = Callable[..., tuple[nn.Module, nn.Module]]


def _require_undilated(name: str, stride: int) -> None:
    if stride != 32:
        raise ConfigError(
            f"{name} head merges features at strides 4-32 and needs encoder_output_stride 32 "
            f"(it is {stride}); put dilation-based heads (deeplabv3plus) on their own model"
        )


def _upernet(
    channels, depth, stride, classes, decoder_channels: int = 256, decoder_use_norm="batchnorm"
):
    _require_undilated("upernet", stride)
    decoder = UPerNetDecoder(
        encoder_channels=channels,
        encoder_depth=depth,
        decoder_channels=decoder_channels,
        use_norm=decoder_use_norm,
    )
    return decoder, SegmentationHead(decoder_channels, classes, kernel_size=1, upsampling=4)


def _fpn(
    channels,
    depth,
    stride,
    classes,
    decoder_pyramid_channels: int = 256,
    decoder_segmentation_channels: int = 128,
    decoder_merge_policy: str = "add",
    decoder_dropout: float = 0.2,
    decoder_interpolation: str = "nearest",
):
    _require_undilated("fpn", stride)
    decoder = FPNDecoder(
        encoder_channels=channels,
        encoder_depth=depth,
        pyramid_channels=decoder_pyramid_channels,
        segmentation_channels=decoder_segmentation_channels,
        dropout=decoder_dropout,
        merge_policy=decoder_merge_policy,
        interpolation_mode=decoder_interpolation,
    )
    return decoder, SegmentationHead(decoder.out_channels, classes, kernel_size=1, upsampling=4)


def _unet(
    channels,
    depth,
    stride,
    classes,
    decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
    decoder_use_norm="batchnorm",
    decoder_attention_type: str | None = None,
    decoder_interpolation: str = "nearest",
):
    _require_undilated("unet", stride)
    decoder_channels = tuple(decoder_channels)[:depth]
    if len(decoder_channels) != depth:
        raise ConfigError(f"unet head: decoder_channels needs {depth} entries (encoder_depth)")
    decoder = UnetDecoder(
        encoder_channels=channels,
        decoder_channels=decoder_channels,
        n_blocks=depth,
        use_norm=decoder_use_norm,
        add_center_block=False,
        attention_type=decoder_attention_type,
        interpolation_mode=decoder_interpolation,
    )
    return decoder, SegmentationHead(decoder_channels[-1], classes, kernel_size=3)


def _deeplabv3plus(
    channels,
    depth,
    stride,
    classes,
    decoder_channels: int = 256,
    decoder_atrous_rates: Sequence[int] = (12, 24, 36),
    decoder_aspp_separable: bool = True,
    decoder_aspp_dropout: float = 0.5,
):
    if stride not in (8, 16):
        raise ConfigError(
            f"deeplabv3plus head needs a dilated encoder: set encoder_output_stride to 16 or 8 "
            f"(it is {stride})"
        )
    decoder = DeepLabV3PlusDecoder(
        encoder_channels=channels,
        encoder_depth=depth,
        out_channels=decoder_channels,
        atrous_rates=tuple(decoder_atrous_rates),
        output_stride=stride,
        aspp_separable=decoder_aspp_separable,
        aspp_dropout=decoder_aspp_dropout,
    )
    return decoder, SegmentationHead(decoder_channels, classes, kernel_size=1, upsampling=4)


def _segformer(channels, depth, stride, classes, decoder_segmentation_channels: int = 256):
    decoder = SegformerDecoder(
        encoder_channels=channels,
        encoder_depth=depth,
        segmentation_channels=decoder_segmentation_channels,
    )
    head = SegmentationHead(decoder_segmentation_channels, classes, kernel_size=1, upsampling=4)
    return decoder, head


def _pspnet(
    channels,
    depth,
    stride,
    classes,
    psp_out_channels: int = 512,
    decoder_use_norm="batchnorm",
    psp_dropout: float = 0.2,
):
    decoder = PSPDecoder(
        encoder_channels=channels,
        use_norm=decoder_use_norm,
        out_channels=psp_out_channels,
        dropout=psp_dropout,
    )
    head = SegmentationHead(psp_out_channels, classes, kernel_size=3, upsampling=stride)
    return decoder, head


def _fcn(
    channels,
    depth,
    stride,
    classes,
    decoder_variant: str = "8s",
    decoder_channels: int | None = 256,
    decoder_dropout: float = 0.1,
):
    decoder = FCNDecoder(channels, classes, decoder_variant, decoder_channels, decoder_dropout)
    return decoder, UpsampleHead(level_stride(decoder.levels[-1], stride))


def _fcn_variant(variant: str) -> DecoderBuilder:
    def build(channels, depth, stride, classes, **options):
        return _fcn(channels, depth, stride, classes, decoder_variant=variant, **options)

    return build


def _attention_unet(
    channels, depth, stride, classes, decoder_channels: Sequence[int] = (256, 128, 64, 32, 16)
):
    decoder_channels = tuple(decoder_channels)[:depth]
    decoder = AttentionUNetDecoder(channels, decoder_channels)
    return decoder, SegmentationHead(decoder_channels[-1], classes, kernel_size=3)


def _setr(
    channels, depth, stride, classes, decoder_channels: int = 256, decoder_out_stride: int = 4
):
    in_stride = level_stride(depth, stride)
    decoder = SETRPUPDecoder(channels[-1], in_stride, decoder_channels, decoder_out_stride)
    head = SegmentationHead(decoder_channels, classes, kernel_size=1, upsampling=decoder_out_stride)
    return decoder, head


def _panoptic_fpn(
    channels,
    depth,
    stride,
    classes,
    decoder_pyramid_channels: int = 256,
    decoder_segmentation_channels: int = 128,
):
    if stride < 2**depth:
        raise ConfigError(
            f"panoptic_fpn head merges encoder levels at strides 4-{2**depth} and needs an "
            f"undilated encoder (encoder_output_stride {stride} < {2**depth})"
        )
    decoder = PanopticFPNDecoder(channels, decoder_pyramid_channels, decoder_segmentation_channels)
    head = SegmentationHead(decoder.out_channels, classes, kernel_size=1, upsampling=4)
    return decoder, head


DECODERS: dict[str, DecoderBuilder] = {
    "upernet": _upernet,
    "fpn": _fpn,
    "unet": _unet,
    "deeplabv3plus": _deeplabv3plus,
    "segformer": _segformer,
    "pspnet": _pspnet,
    "fcn": _fcn,
    "fcn32s": _fcn_variant("32s"),
    "fcn16s": _fcn_variant("16s"),
    "fcn8s": _fcn_variant("8s"),
    "attentionunet": _attention_unet,
    "setr": _setr,
    "panopticfpn": _panoptic_fpn,
}


def build_decoder(
    name: str,
    encoder_channels: Sequence[int],
    encoder_depth: int,
    output_stride: int,
    classes: int,
    **kwargs: Any,
) -> tuple[nn.Module, nn.Module]:
    """Build ``(decoder, segmentation_head)`` for decoder ``name`` on an encoder's channels."""
    key = name.lower().replace("-", "").replace("_", "")
    if key not in DECODERS:
        raise ConfigError(f"unknown decoder {name!r}; valid decoders: {sorted(DECODERS)}")
    try:
        return DECODERS[key](
            list(encoder_channels), encoder_depth, output_stride, classes, **kwargs
        )
    except TypeError as err:
        raise ConfigError(f"decoder {name!r}: {err}") from err
