"""Data loading and checking for segmentation and classification (images, hard masks, soft
masks, image labels), and the DataModule that owns the loaders.

Everything here takes built objects and plain values; configs are loaded and instantiated by
the application layer (`polyhead.config`, `polyhead.train`).
"""

from importlib import import_module
from typing import Any

#: public name -> module: imported on first use, so reading rasters (e.g. `polyhead aggregate`
#: through `polyhead.data.raster_io`) does not import torch, albumentations or Lightning
_LAZY = {
    "DataModule": "polyhead.data.datamodule",
    "DataSummary": "polyhead.data.validation",
    "RandomCropSegmentationDataset": "polyhead.data.datasets",
    "build_augmentations": "polyhead.data.transforms",
    "check_data": "polyhead.data.validation",
    "check_data_in_config": "polyhead.data.config_check",
    "loader_options": "polyhead.data.loader",
    "make_loader": "polyhead.data.loader",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'polyhead.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
