"""One tile's share of the blend (`pipeline_blend`): which of its pixels are its own, and
its weighted maps set or added into the sums.

Tiles are added in raster order (strips top to bottom, a band's columns left to right), so
a tile knows which of its pixels no earlier tile wrote: its *fresh* rectangle, below the
tile above and right of the tile to its left. It sets those and adds to the rest, and the
sums never need zeroing (a tile skipped as nodata zeroes its fresh rectangle in its turn).
On a GPU, where zeroing costs almost nothing and every op is a kernel launch, the sums are
zeroed instead and each tile is one weighted add (`pipeline_blend.SETS_FRESH`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def own_span(starts: list[int], i: int, size: int) -> tuple[int, int]:
    """``(lo, hi)``, in tile coordinates, of the span of tile ``i`` (of ``size`` pixels at
    ``starts``) that no other tile of its axis covers (empty when ``hi <= lo``)."""
    lo = starts[i - 1] + size - starts[i] if i > 0 else 0
    hi = starts[i + 1] - starts[i] if i + 1 < len(starts) else size
    return max(lo, 0), min(hi, size)


#: a rectangle of a tile, ``(y0, y1, x0, x1)`` in tile coordinates
Rect = tuple[int, int, int, int]


def uninitialized(shape: Sequence[int], device: torch.device) -> torch.Tensor:
    """A float32 buffer whose values are set by the tiles before they are read (the
    module docstring); tests replace this to fill it with NaN."""
    return torch.empty(tuple(shape), device=device)


def rect_minus(outer: Rect, inner: Rect) -> list[Rect]:
    """The non-empty parts of ``outer`` outside ``inner`` (which lies inside it or is
    empty): top, bottom, left, right."""
    oy0, oy1, ox0, ox1 = outer
    iy0, iy1, ix0, ix1 = inner
    if iy1 <= iy0 or ix1 <= ix0:
        parts = [outer]
    else:
        parts = [
            (oy0, iy0, ox0, ox1),
            (iy1, oy1, ox0, ox1),
            (iy0, iy1, ox0, ix0),
            (iy0, iy1, ix1, ox1),
        ]
    return [r for r in parts if r[1] > r[0] and r[3] > r[2]]


def at(t: torch.Tensor, r: Rect) -> torch.Tensor:
    return t[..., r[0] : r[1], r[2] : r[3]]


def add_tile(
    acc: torch.Tensor,
    values: torch.Tensor,
    weights: torch.Tensor,
    fresh: Rect,
    own: Rect | None = None,
) -> None:
    """Add one tile's ``values [K, h, w]``, weighted by ``weights [h, w]``, to its window
    ``acc [K, h, w]`` of the sums: the pixels of ``fresh`` (no earlier tile wrote them) are
    set, the others added to.

    With ``own`` (the pixels no other tile covers, inside ``fresh``; may be empty),
    ``values`` are class scores for an arg-max: the own pixels get the scores themselves,
    whose arg-max is their softmax's, and the rest the weighted softmax, so every pixel's
    sums have the arg-max of the blended probabilities."""
    h, w = weights.shape
    setting = [fresh] if fresh[1] > fresh[0] and fresh[3] > fresh[2] else []
    if own is not None and own[1] > own[0] and own[3] > own[2]:
        at(acc, own).copy_(at(values, own))
        setting = rect_minus(fresh, own)

    def part(r: Rect) -> torch.Tensor:
        return torch.softmax(at(values, r), dim=0) if own is not None else at(values, r)

    for r in setting:
        torch.mul(part(r), at(weights, r), out=at(acc, r))
    for r in rect_minus((0, h, 0, w), fresh):
        at(acc, r).addcmul_(part(r), at(weights, r))


def add_weights(wsum: torch.Tensor, weights: torch.Tensor, fresh: Rect) -> None:
    """`add_tile` for the sums of the weights ``wsum [h, w]``."""
    h, w = weights.shape
    at(wsum, fresh).copy_(at(weights, fresh))
    for r in rect_minus((0, h, 0, w), fresh):
        at(wsum, r).add_(at(weights, r))
