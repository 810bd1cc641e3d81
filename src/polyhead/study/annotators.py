"""A harder annotator simulation: few annotators who disagree most near class borders.

The demo's annotators (`polyhead.demo.synthetic.corrupt_mask`) spread their mistakes over
wobbly boundaries, whole objects and blobs. Here each annotator first makes such mistakes at
a (high) base reliability, then, within a few pixels of a class border, gives the class on
the other side of the border with a probability that decays with the distance to it:
``border_error * exp(-(d - 1) / width)`` at distance ``d`` (1 = the pixel touching the
border). The draw is spatially coherent (a smooth field turned into uniform values), so the
errors form bands along borders, not salt-and-pepper noise; annotators draw independently, so
they disagree most where the truth is hardest to see.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.special import ndtr

from polyhead.demo.scenes import smooth_field
from polyhead.demo.synthetic import corrupt_mask
from polyhead.errors import ConfigError, DataError


@dataclass(frozen=True)
class BorderAnnotator:
    """One simulated annotator: base ``reliability`` (as the demo's), then border mistakes
    with probability ``border_error`` at the border, decaying over ``width`` pixels."""

    reliability: float = 0.95
    border_error: float = 0.4
    width: float = 2.0
    coherence: float = 1.5
    """Smoothing (pixels) of the field that decides where the border mistakes fall."""

    def __post_init__(self) -> None:
        if not 0.0 < self.reliability <= 1.0:
            raise ConfigError(f"reliability must be in (0, 1], got {self.reliability}")
        if not 0.0 <= self.border_error <= 1.0:
            raise ConfigError(f"border_error must be in [0, 1], got {self.border_error}")
        if not self.width > 0 or not self.coherence > 0:
            raise ConfigError(
                f"width and coherence must be > 0, got {self.width}, {self.coherence}"
            )


#: the study's harder setting: two annotators, many mistakes along class borders
HARDER_ANNOTATORS: dict[str, BorderAnnotator] = {
    "careful": BorderAnnotator(reliability=0.93, border_error=0.35, width=1.5),
    "hurried": BorderAnnotator(reliability=0.8, border_error=0.5, width=2.5),
}


def nearest_other_class(truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: Euclidean distance to the nearest pixel of another class, and that class.

    ``truth`` ``[H, W]`` integer labels. A map with one class only gets distance ``inf`` and
    its own label everywhere.
    """
    truth = np.asarray(truth)
    if truth.ndim != 2:
        raise DataError(f"truth must be [H, W], got shape {truth.shape}")
    dist = np.full(truth.shape, np.inf)
    other = truth.copy()
    for c in np.unique(truth):
        inside = truth == c
        d_c = ndimage.distance_transform_edt(~inside)  # distance to the nearest pixel of c
        closer = ~inside & (d_c < dist)
        dist[closer], other[closer] = d_c[closer], c
    return dist, other


def border_error_probability(distance: np.ndarray, annotator: BorderAnnotator) -> np.ndarray:
    """Probability that ``annotator`` gives the neighbouring class at ``distance`` pixels."""
    d = np.maximum(np.asarray(distance, dtype=np.float64), 1.0)
    return annotator.border_error * np.exp(-(d - 1.0) / annotator.width)


def border_annotation(
    truth: np.ndarray, annotator: BorderAnnotator, confusion: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """One annotator's mask: the demo's mistakes at ``reliability`` (``confusion`` as in
    `corrupt_mask`), then border mistakes towards the class across the nearest border."""
    truth = np.asarray(truth)
    out = (
        truth.copy()
        if annotator.reliability >= 1.0
        else corrupt_mask(truth, annotator.reliability, confusion, rng)
    )
    if annotator.border_error == 0.0:
        return out
    dist, other = nearest_other_class(truth)
    uniform = ndtr(smooth_field(rng, truth.shape, annotator.coherence))
    flip = uniform < border_error_probability(dist, annotator)
    out[flip] = other[flip]
    return out


def annotate(
    truth: np.ndarray,
    annotators: Mapping[str, BorderAnnotator],
    confusions: Mapping[str, np.ndarray],
    rng: np.random.Generator,
) -> np.ndarray:
    """Masks of every annotator, stacked ``[A, H, W]`` in the order of ``annotators``."""
    missing = [a for a in annotators if a not in confusions]
    if missing:
        raise ConfigError(f"no confusion matrix for annotators {missing}")
    return np.stack(
        [border_annotation(truth, a, confusions[n], rng) for n, a in annotators.items()]
    )
