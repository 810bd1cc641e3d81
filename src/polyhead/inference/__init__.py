"""Sliding-window inference for arrays and large georeferenced rasters."""

from polyhead.inference.boundary_metrics import BoundaryF1, boundary_f1, boundary_mask
from polyhead.inference.crf import (
    CRF_MAX_PIXELS,
    PermutohedralLattice,
    check_crf_size,
    dense_crf,
    predict_raster_crf,
)
from polyhead.inference.sliding_window import PredictionResult, predict_array, predict_raster
from polyhead.inference.tiling import blend_window, n_tiles, tile_starts
from polyhead.inference.tta import TTAModel, build_tta, tta_from_config
from polyhead.inference.uncertainty import (
    max_prob_uncertainty,
    predictive_entropy,
    uncertainty_map,
)
from polyhead.inference.writers import AtomicGeoTiff, geotiff_profile

__all__ = [
    "CRF_MAX_PIXELS",
    "AtomicGeoTiff",
    "BoundaryF1",
    "PermutohedralLattice",
    "PredictionResult",
    "TTAModel",
    "blend_window",
    "boundary_f1",
    "boundary_mask",
    "build_tta",
    "check_crf_size",
    "dense_crf",
    "geotiff_profile",
    "max_prob_uncertainty",
    "n_tiles",
    "predict_array",
    "predict_raster",
    "predict_raster_crf",
    "predictive_entropy",
    "tile_starts",
    "tta_from_config",
    "uncertainty_map",
]
