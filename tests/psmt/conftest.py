"""A module with psmt's UPerNetDualHead key layout, and its Lightning checkpoint."""

from __future__ import annotations

import pytest
import segmentation_models_pytorch as smp
import torch
from omegaconf import OmegaConf
from segmentation_models_pytorch.base import SegmentationHead
from segmentation_models_pytorch.decoders.upernet.decoder import UPerNetDecoder
from torch import nn

SEED = "pytorch_segmentation_models_trainer"
CLASSES, CHANNELS = 3, 16
LOG_SIGMAS = {"log_sigma_hard": 0.25, "log_sigma_soft": -0.5, "log_sigma_consist": 0.75}
MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]


class PsmtLayout(nn.Module):
    """psmt's UPerNetDualHead as its state dict names it: encoder, decoder_A/B, seg_head_A/B."""

    def __init__(self, use_norm="batchnorm") -> None:
        super().__init__()
        self.encoder = smp.encoders.get_encoder("resnet18", in_channels=3, depth=5, weights=None)
        for name in ("A", "B"):
            decoder = UPerNetDecoder(
                encoder_channels=self.encoder.out_channels,
                encoder_depth=5,
                decoder_channels=CHANNELS,
                use_norm=use_norm,
            )
            head = SegmentationHead(CHANNELS, CLASSES, kernel_size=1, upsampling=4)
            setattr(self, f"decoder_{name}", decoder)
            setattr(self, f"seg_head_{name}", head)

    def forward(self, x):
        features = self.encoder(x)
        a = self.seg_head_A(self.decoder_A(features))
        b = self.seg_head_B(self.decoder_B(features))
        return {"A": a, "B": b, "average": (a + b) / 2.0}


def psmt_config(**model):
    """A psmt run config: the dual head, the Kendall loss, a validation Normalize step."""
    return {
        "model": {
            "_target_": f"{SEED}.custom_models.upernet_dual_head.UPerNetDualHead",
            "encoder_name": "resnet18",
            "encoder_weights": None,
            "in_channels": 3,
            "classes": CLASSES,
            "decoder_channels": CHANNELS,
            "inference_head": "average",
            **model,
        },
        "loss": {
            "_target_": f"{SEED}.custom_losses.loss.DualHeadKendallLoss",
            "num_classes": CLASSES,
            "consistency_warmup_epochs": 3,
        },
        "val_dataset": {
            "_target_": f"{SEED}.dataset_loader.dataset.RandomCropSegmentationDataset",
            "input_csv_path": "/nowhere/val.csv",
            "crop_size": [64, 64],
            "grid_mode": True,
            "n_classes": CLASSES,
            "augmentation_list": [
                {"_target_": "albumentations.Normalize", "mean": MEAN, "std": STD},
                {"_target_": "albumentations.pytorch.ToTensorV2"},
            ],
        },
        "metrics": [{"_target_": "torchmetrics.JaccardIndex"}],
    }


def write_psmt_checkpoint(path, use_norm="batchnorm", **model_options):
    """Save a randomly initialised psmt-layout module as psmt's Lightning module would."""
    torch.manual_seed(0)
    module = PsmtLayout(use_norm)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode matters
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    state = {f"model.{k}": v for k, v in module.state_dict().items()}
    state.update({f"loss_function.{k}": torch.tensor(v) for k, v in LOG_SIGMAS.items()})
    cfg = OmegaConf.create(psmt_config(decoder_use_norm=use_norm, **model_options))
    torch.save(
        {
            "epoch": 3,
            "state_dict": state,
            "hyper_parameters": {"cfg": cfg, "inference_mode": False},
        },
        path,
    )
    return module.eval()


@pytest.fixture
def psmt_ckpt(tmp_path):
    """(checkpoint path, the psmt-layout module in eval mode)."""
    path = tmp_path / "psmt.ckpt"
    return path, write_psmt_checkpoint(path)
