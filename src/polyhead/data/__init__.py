"""Data loading and checking for semantic segmentation (images, hard masks, soft masks)."""

from polyhead.data.datasets import RandomCropSegmentationDataset, check_data_from_config
from polyhead.data.transforms import build_augmentations
from polyhead.data.validation import DataSummary, check_data

__all__ = [
    "DataSummary",
    "RandomCropSegmentationDataset",
    "build_augmentations",
    "check_data",
    "check_data_from_config",
]
