"""Data loading and checking for segmentation and classification (images, hard masks, soft
masks, image labels), and the DataModule that owns the loaders.

Everything here takes built objects and plain values; configs are loaded and instantiated by
the application layer (`polyhead.config`, `polyhead.train`).
"""

from typing import Any

from polyhead.data.config_check import check_data_in_config
from polyhead.data.datasets import RandomCropSegmentationDataset
from polyhead.data.loader import loader_options, make_loader
from polyhead.data.transforms import build_augmentations
from polyhead.data.validation import DataSummary, check_data

__all__ = [
    "DataModule",
    "DataSummary",
    "RandomCropSegmentationDataset",
    "build_augmentations",
    "check_data",
    "check_data_in_config",
    "loader_options",
    "make_loader",
]


def __getattr__(name: str) -> Any:
    if name == "DataModule":  # imported on use: Lightning takes seconds to import
        from polyhead.data.datamodule import DataModule

        return DataModule
    raise AttributeError(f"module 'polyhead.data' has no attribute {name!r}")
