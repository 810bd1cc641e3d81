"""Demo helpers: synthetic remote-sensing data with simulated annotators, and figures."""

from polyhead.demo.figures import figure_pixel_size, save_prediction_figure
from polyhead.demo.scenes import CLASS_NAMES, land_cover_map, render_scene
from polyhead.demo.synthetic import (
    SyntheticDataset,
    corrupt_mask,
    generate_synthetic_dataset,
    majority_vote,
    vote_fractions,
)

__all__ = [
    "CLASS_NAMES",
    "SyntheticDataset",
    "corrupt_mask",
    "figure_pixel_size",
    "generate_synthetic_dataset",
    "land_cover_map",
    "majority_vote",
    "render_scene",
    "save_prediction_figure",
    "vote_fractions",
]
