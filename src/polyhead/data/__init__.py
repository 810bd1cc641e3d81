"""Data loading and checking for segmentation and classification (images, hard masks, soft
masks, image labels), and the DataModule that owns the loaders.

Everything here takes built objects and plain values; configs are loaded and instantiated by
the application layer (`polyhead.config`, `polyhead.train`).
"""

#: public name -> module: imported on first use, so reading rasters (e.g. `polyhead aggregate`
#: through `polyhead.data.raster_io`) does not import torch, albumentations or Lightning
from polyhead.lazy import lazy_exports

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

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
