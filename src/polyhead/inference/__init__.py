"""Sliding-window inference for arrays and large georeferenced rasters."""

from polyhead.inference.sliding_window import PredictionResult, predict_array, predict_raster
from polyhead.inference.tiling import blend_window, n_tiles, tile_starts
from polyhead.inference.writers import AtomicGeoTiff, geotiff_profile

__all__ = [
    "AtomicGeoTiff",
    "PredictionResult",
    "blend_window",
    "geotiff_profile",
    "n_tiles",
    "predict_array",
    "predict_raster",
    "tile_starts",
]
