"""Prediction: the one Predictor (head or blend, TTA), sliding windows over large rasters."""

from polyhead.inference.boundary_metrics import BoundaryF1, boundary_f1, boundary_mask
from polyhead.inference.crf import PermutohedralLattice, dense_crf
from polyhead.inference.crf_raster import CRF_MAX_PIXELS, check_crf_size, predict_raster_crf
from polyhead.inference.predictor import Predictor, head_outputs
from polyhead.inference.rasters import PredictionResult, predict_raster
from polyhead.inference.sliding_window import predict_array, predict_maps
from polyhead.inference.tiling import blend_window, n_tiles, tile_starts
from polyhead.inference.tta import Augmentation, TTAModel, augmentations, build_tta, tta_from_config
from polyhead.inference.uncertainty import (
    max_prob_uncertainty,
    predictive_entropy,
    uncertainty_map,
)
from polyhead.io import AtomicGeoTiff, geotiff_profile

__all__ = [
    "CRF_MAX_PIXELS",
    "AtomicGeoTiff",
    "BoundaryF1",
    "PermutohedralLattice",
    "Augmentation",
    "PredictionResult",
    "Predictor",
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
    "augmentations",
    "head_outputs",
    "predict_array",
    "predict_maps",
    "predict_raster",
    "predict_raster_crf",
    "predictive_entropy",
    "tile_starts",
    "tta_from_config",
    "uncertainty_map",
]
