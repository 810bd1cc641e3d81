"""Prediction: the one Predictor (head or blend, TTA), sliding windows over large rasters.

Names here are imported on first use, so a light submodule (``polyhead.inference.vector``,
which polygonising worker processes import) starts without torch.
"""

from __future__ import annotations

from polyhead.lazy import lazy_exports

_LAZY = {
    "AtomicGeoTiff": "polyhead.io",
    "Augmentation": "polyhead.inference.tta",
    "BoundaryF1": "polyhead.inference.boundary_metrics",
    "CRF_MAX_PIXELS": "polyhead.inference.crf_raster",
    "PermutohedralLattice": "polyhead.inference.crf",
    "PredictionResult": "polyhead.inference.rasters",
    "Predictor": "polyhead.inference.predictor",
    "TTAModel": "polyhead.inference.tta",
    "augmentations": "polyhead.inference.tta",
    "blend_window": "polyhead.inference.tiling",
    "boundary_f1": "polyhead.inference.boundary_metrics",
    "boundary_mask": "polyhead.inference.boundary_metrics",
    "build_tta": "polyhead.inference.tta",
    "check_crf_size": "polyhead.inference.crf_raster",
    "dense_crf": "polyhead.inference.crf",
    "geotiff_profile": "polyhead.io",
    "head_outputs": "polyhead.inference.predictor",
    "max_prob_uncertainty": "polyhead.inference.uncertainty",
    "n_tiles": "polyhead.inference.tiling",
    "predict_array": "polyhead.inference.sliding_window",
    "predict_maps": "polyhead.inference.sliding_window",
    "predict_raster": "polyhead.inference.rasters",
    "predict_raster_crf": "polyhead.inference.crf_raster",
    "predictive_entropy": "polyhead.inference.uncertainty",
    "tile_starts": "polyhead.inference.tiling",
    "tta_from_config": "polyhead.inference.tta",
    "uncertainty_map": "polyhead.inference.uncertainty",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
