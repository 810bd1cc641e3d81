"""Training configs for distillation on the synthetic demo data (teachers and students).

The same ``_target_`` trees as ``configs/examples/distill_*.yaml``, built in Python so tests
and benchmarks can size them down.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from polyhead.demo.run import demo_config
from polyhead.demo.synthetic import SyntheticDataset

#: decoder options of small teacher heads, by decoder
TEACHER_DECODERS: dict[str, dict[str, Any]] = {
    "upernet": {"decoder_channels": 32},
    "fpn": {"decoder_pyramid_channels": 32, "decoder_segmentation_channels": 32},
    "unet": {"decoder_channels": [64, 32, 32, 16, 16]},
}

#: student head options and the encoder output stride they need, by decoder
STUDENT_DECODERS: dict[str, tuple[dict[str, Any], int]] = {
    "deeplabv3plus": ({"decoder_channels": 64}, 16),
    "unet": ({"decoder_channels": [128, 64, 32, 32, 16]}, 32),
}

#: loss configs by recipe name
RECIPES: dict[str, dict[str, Any]] = {
    "polyhead": {"_target_": "polyhead.distill.DistillationLoss"},
    "thread": {"_target_": "polyhead.distill.ThreadRecipeLoss"},
}


def uncertainty_head_options(loss_cfg: dict[str, Any]) -> dict[str, str]:
    """The uncertainty head's ``transform``, ``activation`` and ``uncertainty_target`` that
    match a `DistillationLoss` or `ThreadRecipeLoss` config (the losses' defaults included)."""
    if loss_cfg["_target_"].endswith("ThreadRecipeLoss"):
        return {
            "transform": loss_cfg.get("transform", "identity"),
            "activation": "sigmoid" if loss_cfg.get("sigmoid", True) else "none",
            "uncertainty_target": loss_cfg.get("uncertainty_target", "std_per_class"),
        }
    return {
        "transform": (loss_cfg.get("uncertainty") or {}).get("transform", "sqrt"),
        "activation": "none",
        "uncertainty_target": loss_cfg.get("uncertainty_target", "entropy"),
    }


_QUIET = {"enable_progress_bar": False, "enable_model_summary": False}


def teacher_config(
    data: SyntheticDataset,
    out_dir: Path,
    decoder: str = "upernet",
    seed: int = 0,
    epochs: int = 3,
    encoder_name: str = "resnet18",
    crop_size: int = 64,
    samples_per_epoch: int = 128,
) -> dict[str, Any]:
    """A one-head (hard) teacher on the synthetic data: CE on the majority-vote masks."""
    cfg = demo_config(data, out_dir, epochs, encoder_name, crop_size, samples_per_epoch)
    cfg["seed"] = seed
    cfg["model"] = {
        "_target_": "polyhead.models.MultiHeadSegmentationModel",
        "encoder_name": encoder_name,
        "encoder_weights": None,
        "in_channels": data.bands,
        "classes": len(data.class_names),
        "heads": {"A": {"decoder": decoder, "role": "hard", **TEACHER_DECODERS.get(decoder, {})}},
    }
    cfg["task"] = {}
    cfg["callbacks"] = [
        {
            "_target_": "lightning.pytorch.callbacks.ModelCheckpoint",
            "monitor": "loss/val",
            "mode": "min",
            "save_top_k": 1,
            "save_last": True,
        }
    ]
    cfg["pl_trainer"].update(_QUIET)
    return cfg


def student_config(
    data: SyntheticDataset,
    train_csv: Path,
    val_csv: Path,
    out_dir: Path,
    loss: dict[str, Any] | str = "polyhead",
    epochs: int = 8,
    encoder_name: str = "tu-mobilenetv3_large_100",
    decoder: str = "deeplabv3plus",
    decoder_options: dict[str, Any] | None = None,
    crop_size: int = 64,
    samples_per_epoch: int = 128,
    batch_size: int = 8,
    lr: float = 2e-3,
    seed: int = 0,
) -> dict[str, Any]:
    """A two-head student (class-map head ``seg``, uncertainty head ``unc``, both ``decoder``
    with `STUDENT_DECODERS` options updated by ``decoder_options``) trained with
    `polyhead.tasks.distillation.DistillationTask` on ``distill.csv`` files.

    ``loss`` is a recipe name (`RECIPES`) or a loss config; the uncertainty head gets K
    channels when the loss regresses ``std_per_class`` (the thread recipe's default).
    """
    loss_cfg = dict(RECIPES[loss]) if isinstance(loss, str) else dict(loss)
    cfg = demo_config(data, out_dir, epochs, encoder_name, crop_size, samples_per_epoch)
    n_classes = len(data.class_names)
    unc_options = uncertainty_head_options(loss_cfg)
    per_class = unc_options["uncertainty_target"] == "std_per_class"
    options, stride = STUDENT_DECODERS.get(decoder, ({}, 32))
    head = {"decoder": decoder, **options, **(decoder_options or {})}
    cfg["seed"] = seed
    cfg["model"] = {
        "_target_": "polyhead.models.MultiHeadSegmentationModel",
        "encoder_name": encoder_name,
        "encoder_weights": None,
        "in_channels": data.bands,
        "classes": n_classes,
        "encoder_output_stride": stride,
        "inference_head": "seg",
        "heads": {
            "seg": {**head, "role": "soft"},
            "unc": {
                **head,
                **unc_options,
                "role": "uncertainty",
                "classes": n_classes if per_class else 1,
            },
        },
    }
    cfg["loss"] = loss_cfg
    cfg["task"] = {"_target_": "polyhead.tasks.distillation.DistillationTask"}
    cfg["optimizer"]["lr"] = lr
    extra = {"extra_targets": {"uncertainty": "uncertainty"}}
    cfg["train_dataset"].update(input_csv_path=str(train_csv), **extra)
    cfg["train_dataset"]["data_loader"]["batch_size"] = batch_size
    cfg["val_dataset"].update(input_csv_path=str(val_csv), **extra)
    cfg["callbacks"] = [
        {
            "_target_": "lightning.pytorch.callbacks.ModelCheckpoint",
            "monitor": None,
            "save_last": True,
        }
    ]
    cfg["pl_trainer"].update(_QUIET)
    return cfg
