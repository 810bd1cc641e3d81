"""Boundary F1: how well predicted class boundaries match the true ones, within a tolerance.

A boundary pixel is a pixel with a 4-neighbour of another label (pixels on both sides of
an edge count; the image frame is not a boundary). Precision is the fraction of
predicted boundary pixels within ``tolerance`` pixels (Euclidean) of a true boundary
pixel; recall the fraction of true boundary pixels within ``tolerance`` of a predicted
one; F1 their harmonic mean (as in the BF score of Csurka et al. 2013). Per class, the
boundaries of each class's binary mask are compared the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from polyhead.errors import ConfigError, DataError


def boundary_mask(labels: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Boolean ``[H, W]``: pixels whose label differs from a (valid) 4-neighbour."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise DataError(f"labels must be [H, W], got shape {labels.shape}")
    out = np.zeros(labels.shape, dtype=bool)
    for axis in (0, 1):
        a = [slice(None), slice(None)]
        b = [slice(None), slice(None)]
        a[axis], b[axis] = slice(1, None), slice(None, -1)
        diff = labels[tuple(a)] != labels[tuple(b)]
        if valid is not None:
            diff &= valid[tuple(a)] & valid[tuple(b)]
        out[tuple(a)] |= diff
        out[tuple(b)] |= diff
    return out


def _matched(boundary: np.ndarray, reference: np.ndarray, tolerance: float) -> int:
    """How many ``boundary`` pixels lie within ``tolerance`` of a ``reference`` pixel."""
    if not boundary.any() or not reference.any():
        return 0
    dist = ndimage.distance_transform_edt(~reference)
    return int((dist[boundary] <= tolerance).sum())


@dataclass
class BoundaryF1:
    """Accumulate boundary precision/recall counts over images; `compute` gives F1.

    ``num_classes=None``: class-agnostic boundaries of the label maps only. With
    ``num_classes`` per-class boundaries are counted too, and ``compute()`` adds
    ``per_class_f1`` and their mean over classes with any boundary (``mean_class_f1``).
    Pixels equal to ``ignore_index`` in the target are excluded (no boundary is
    counted at or against them). Counts are summed over images (micro average).
    """

    tolerance: float = 2.0
    num_classes: int | None = None
    ignore_index: int | None = 255
    counts: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        if self.tolerance < 0:
            raise ConfigError(f"tolerance must be >= 0, got {self.tolerance}")
        if self.num_classes is not None and self.num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {self.num_classes}")
        # rows: all classes, then one per class; columns: pred matched, pred, true matched, true
        self.counts = np.zeros((1 + (self.num_classes or 0), 4), dtype=np.int64)

    def _add(self, row: int, pred_b: np.ndarray, true_b: np.ndarray) -> None:
        self.counts[row] += (
            _matched(pred_b, true_b, self.tolerance),
            int(pred_b.sum()),
            _matched(true_b, pred_b, self.tolerance),
            int(true_b.sum()),
        )

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        """Add one ``[H, W]`` predicted label map and its target."""
        pred, target = np.asarray(pred), np.asarray(target)
        if pred.shape != target.shape or pred.ndim != 2:
            raise DataError(f"pred {pred.shape} and target {target.shape} must be equal [H, W]")
        valid = None if self.ignore_index is None else target != self.ignore_index
        if valid is not None and valid.all():
            valid = None
        self._add(0, boundary_mask(pred, valid), boundary_mask(target, valid))
        for c in range(self.num_classes or 0):
            self._add(1 + c, boundary_mask(pred == c, valid), boundary_mask(target == c, valid))

    @staticmethod
    def _prf(row: np.ndarray) -> tuple[float, float, float]:
        pm, pn, tm, tn = (float(v) for v in row)
        precision = pm / pn if pn else float("nan")
        recall = tm / tn if tn else float("nan")
        if pn == 0 and tn == 0:
            return 1.0, 1.0, 1.0  # no boundary predicted and none to find
        if pn == 0 or tn == 0 or precision + recall == 0:
            return precision if pn else 0.0, recall if tn else 0.0, 0.0
        return precision, recall, 2 * precision * recall / (precision + recall)

    def compute(self) -> dict[str, float | list[float]]:
        """``precision``, ``recall``, ``f1`` (all classes) and per-class F1 if configured."""
        precision, recall, f1 = self._prf(self.counts[0])
        out: dict[str, float | list[float]] = {"precision": precision, "recall": recall, "f1": f1}
        if self.num_classes:
            per = [self._prf(r)[2] if r[1] + r[3] else float("nan") for r in self.counts[1:]]
            out["per_class_f1"] = per
            present = [v for v in per if not np.isnan(v)]
            out["mean_class_f1"] = float(np.mean(present)) if present else float("nan")
        return out


def boundary_f1(
    pred: np.ndarray,
    target: np.ndarray,
    tolerance: float = 2.0,
    num_classes: int | None = None,
    ignore_index: int | None = 255,
) -> dict[str, float | list[float]]:
    """Boundary precision, recall and F1 of one ``[H, W]`` prediction; see `BoundaryF1`."""
    metric = BoundaryF1(tolerance=tolerance, num_classes=num_classes, ignore_index=ignore_index)
    metric.update(pred, target)
    return metric.compute()
