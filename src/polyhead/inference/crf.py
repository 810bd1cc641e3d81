"""Fully connected (dense) CRF refinement of class probabilities, vectorised on CPU.

Mean-field inference of Krähenbühl & Koltun (2011), "Efficient Inference in Fully
Connected CRFs with Gaussian Edge Potentials", with a Potts compatibility and two
kernels, as in the reference C++ code (``pydensecrf``):

- smoothness: ``w_gaussian * exp(-|p_i - p_j|^2 / (2 sxy_gaussian^2))``;
- appearance: ``w_bilateral * exp(-|p_i - p_j|^2 / (2 sxy_bilateral^2)
  - |I_i - I_j|^2 / (2 srgb_bilateral^2))``.

Each iteration is ``Q <- softmax(log P + sum_m w_m * filter_m(Q))``, where ``filter_m``
is the kernel's Gaussian filter with the reference's symmetric normalisation
(``n * K(n * Q)``, ``n = 1 / sqrt(K 1)``), so a message is a weighted neighbourhood
average of ``Q`` and the weights are comparable to ``pydensecrf``'s ``compat``.

Approximations (exact dense filtering is O(N^2)):

- the smoothness kernel is an exact separable Gaussian filter truncated at 3 sigma
  (zero padding; the normalisation accounts for the border);
- the appearance kernel uses the permutohedral lattice (Adams, Baek & Davis 2010),
  the approximation the reference uses, written with array operations: each pixel's
  feature ``(x/sxy, y/sxy, band/srgb, ...)`` is splatted onto the ``d + 1`` vertices of
  its enclosing simplex (``d = 2 + bands``), blurred with ``[1 2 1]`` along the
  ``d + 1`` lattice axes and sliced back. Vertices are found by sorting integer keys
  (one argsort) instead of a hash table; splat and slice are one sparse matrix
  (``scipy.sparse``) with ``d + 1`` entries per pixel. On the synthetic scenes the
  refined labels agree with ``pydensecrf``'s on 99.9% of pixels (mean |dQ| ~5e-4).

Everything runs in numpy/scipy (single-threaded; these memory-bound gathers are several
times faster there than torch's indexing ops on CPU). Memory: the lattice holds about
``8 (d + 1)`` bytes per pixel plus its vertices, the iterations ``~16 K`` B/px more;
building it peaks at about ``24 (d + 1)`` B/px. Measured peak growth: ~150 B/px for 4
bands and 4 classes (~2.5 GB at 4096 x 4096). `dense_crf` refines a whole image at
once, so it is meant for images that fit in memory (refine larger rasters in tiles
with a halo of about ``2 * sxy_bilateral``).
"""

from __future__ import annotations

import math
from typing import TypeVar

import numpy as np
import scipy.sparse as sp
import torch
from scipy import ndimage

from polyhead.errors import ConfigError, DataError

Array = TypeVar("Array", np.ndarray, torch.Tensor)

_CHUNK = 1 << 17  # pixels per chunk while building the lattice (bounds temporary memory)
_EXACT_LIMIT = 2.0**62  # largest key space coded exactly (else hashed)


class PermutohedralLattice:
    """Gaussian filter of unit std in feature space, ``features [N, d]``, via a lattice.

    `filter` computes ``sum_j exp(-|f_i - f_j|^2 / 2) v_j`` approximately (including
    ``j = i``), up to the constant factor the reference implementation also has.
    Vertex keys are coded exactly as mixed-radix int64 when they fit (always for a
    few bands), otherwise by a 64-bit multiplicative hash (collisions improbable).
    """

    def __init__(self, features: np.ndarray) -> None:
        n, d = features.shape
        d1 = d + 1
        self.n, self.d = n, d
        idx = np.arange(d1, dtype=np.float64)
        # per-axis scale of the elevation onto sum(x) = 0 in R^{d+1} (unit-std blur)
        self._scale = math.sqrt(2.0 / 3.0) * d1 / np.sqrt((idx[:d] + 1) * (idx[:d] + 2))
        f = np.asarray(features, dtype=np.float32)
        lo, hi = f.min(0), f.max(0)
        self._centre = (hi + lo) / 2  # features are centred (per chunk): smaller keys
        # bound |key| per axis, then the quotient range of key = d1 * q + remainder
        cmax = ((hi - lo) / 2).astype(np.float64) * self._scale
        bound = cmax.sum() + np.concatenate([[0.0], idx[1:d] * cmax[:-1]])
        qmax = np.floor(bound / d1).astype(np.int64) + 7
        self._qlo, span = -qmax, 2 * qmax + 1
        self._radix = 1 << (d1 - 1).bit_length()  # power of two >= d1: holds the remainder
        if float(np.prod(span.astype(np.float64))) * self._radix < _EXACT_LIMIT:  # exact
            self._mult = np.ones(d, dtype=np.int64)
            self._mult[:-1] = np.cumprod(span[::-1])[::-1][1:]
        else:  # wrapping int64 arithmetic: a hash, still linear in the key
            rng = np.random.default_rng(0)
            self._mult = rng.integers(1, 2**62, d, dtype=np.int64) * 2 + 1
        codes = np.empty((n, d1), dtype=np.int64)
        weight = np.empty((n, d1), dtype=np.float32)
        for s in range(0, n, _CHUNK):
            codes[s : s + _CHUNK], weight[s : s + _CHUNK] = self._simplex(f[s : s + _CHUNK])
        # unique vertex codes and each (pixel, vertex) slot's index among them, by one
        # argsort; the sorted codes are only ever materialised a chunk at a time
        codes = codes.ravel()
        order = np.argsort(codes)
        first = np.empty(len(codes), dtype=bool)
        parts, previous = [], None
        for s in range(0, len(codes), _CHUNK * d1):
            chunk = codes[order[s : s + _CHUNK * d1]]
            head = chunk[:1] != previous if previous is not None else np.ones(1, dtype=bool)
            first[s : s + 1] = head
            np.not_equal(chunk[1:], chunk[:-1], out=first[s + 1 : s + len(chunk)])
            parts.append(chunk[first[s : s + len(chunk)]])
            previous = chunk[-1]
        uniq = np.concatenate(parts)
        del codes, parts
        m = self.m = len(uniq)
        itype = np.int32 if n * d1 < 2**31 - 1 else np.int64  # scipy wants one index dtype
        ranks = np.cumsum(first, dtype=itype)
        ranks -= 1
        del first
        inverse = np.empty(n * d1, dtype=itype)
        inverse[order] = ranks
        del order, ranks
        # slice matrix (its transpose splats): row i holds pixel i's d+1 barycentric weights
        self.slice_matrix = sp.csr_matrix(
            (weight.ravel(), inverse, np.arange(0, n * d1 + 1, d1, dtype=itype)),
            shape=(n, m),
        )
        del weight, inverse
        self.blur_index = np.empty((2, d1, m), dtype=itype)
        with np.errstate(over="ignore"):
            for j in range(d1):
                for sign, ncodes in enumerate(self._neighbour_codes(uniq, j)):
                    pos = np.minimum(np.searchsorted(uniq, ncodes), m - 1)
                    self.blur_index[sign, j] = np.where(uniq[pos] == ncodes, pos, m)  # m: zero
        self.alpha = 1.0 / (1.0 + 2.0 ** (-d))

    def _neighbour_codes(self, codes: np.ndarray, j: int) -> tuple[np.ndarray, np.ndarray]:
        """Codes of the neighbours along lattice axis ``j``: key -/+ 1 on every axis but
        ``j`` and +/- d on ``j`` (the code is linear in the key, so no keys are needed)."""
        d, radix = self.d, self._radix
        rem = codes & (radix - 1)
        mj = self._mult[j] if j < d else np.int64(0)
        total = self._mult.sum()
        lower = np.where(rem > 0, codes + radix * mj - 1, codes - radix * (total - mj) + d)
        upper = np.where(rem < d, codes + 1 - radix * mj, codes - d + radix * (total - mj))
        return lower, upper

    def _simplex(self, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Codes ``[c, d+1]`` (int64) and barycentric weights ``[c, d+1]`` of the vertices
        of the simplex enclosing each feature vector ``f [c, d]``."""
        c, d = f.shape
        d1 = d + 1
        cf = (f - self._centre).T.astype(np.float64) * self._scale[:, None]  # [d, c]
        # elevate: e_0 = sum(cf), e_j = sum_{k >= j} cf_k - j cf_{j-1}
        elevated = np.zeros((d1, c))
        for j in range(d - 1, -1, -1):
            elevated[j] = elevated[j + 1] + cf[j]
        elevated[1:] -= np.arange(1, d1)[:, None] * cf
        # nearest remainder-0 lattice point, then the simplex (ranks) containing the point
        rd = np.round(elevated / d1)
        diff = elevated - rd * d1
        rank = np.zeros((d1, c), dtype=np.int64)
        for i in range(d1):  # descending order of diff, ties by index (as the reference)
            for j in range(i + 1, d1):
                later_wins = diff[j] > diff[i]
                rank[i] += later_wins
                rank[j] += ~later_wins
        rank += rd.sum(0).astype(np.int64)
        wrap = (rank < 0).astype(np.int64) - (rank > d)
        rank += d1 * wrap
        rd += wrap
        v = (elevated - rd * d1) / d1
        bary = np.zeros((d + 2, c))
        cols = np.arange(c)
        for i in range(d1):  # ranks are a permutation: no two i hit the same slot
            bary[d - rank[i], cols] += v[i]
            bary[d - rank[i] + 1, cols] -= v[i]
        bary[0] += 1.0 + bary[d1]
        # vertex r: key_i = d1 * q_i + r, q_i = rd_i - [rank_i > d - r]; code = sum(q * mult)
        # * radix + r (q offset by -qlo to be >= 0; int64 arithmetic wraps in hash mode)
        mult = self._mult[:, None]
        with np.errstate(over="ignore"):
            base = ((rd[:d].astype(np.int64) - self._qlo[:, None]) * mult).sum(0)
            codes = np.empty((c, d1), dtype=np.int64)
            for r in range(d1):
                shift = ((rank[:d] > d - r) * mult).sum(0)
                codes[:, r] = (base - shift) * self._radix + r
        return codes, bary[:d1].T.astype(np.float32)

    def filter(self, values: np.ndarray) -> np.ndarray:
        """Filter ``values [V, N]`` (float32): splat, blur along each axis, slice."""
        lattice = np.zeros((self.m + 1, values.shape[0]), dtype=np.float32)  # row m: zero
        lattice[: self.m] = self.slice_matrix.T @ values.T  # splat
        left, right = np.empty_like(lattice[: self.m]), np.empty_like(lattice[: self.m])
        for j in range(self.d + 1):
            np.take(lattice, self.blur_index[0, j], axis=0, out=left)
            np.take(lattice, self.blur_index[1, j], axis=0, out=right)
            left += right
            left *= np.float32(0.5)
            lattice[: self.m] += left
        out = self.slice_matrix @ lattice[: self.m]  # slice: [N, V]
        out *= np.float32(self.alpha)
        return np.ascontiguousarray(out.T, dtype=np.float32)


def _gaussian_filter(q: np.ndarray, sigma: float) -> np.ndarray:
    """Zero-padded Gaussian filter over the last two axes of ``q [V, H, W]``."""
    return ndimage.gaussian_filter(q, (0, sigma, sigma), mode="constant", truncate=3.0)


def _stretch(image: np.ndarray, stretch: bool | None, uint8: bool) -> np.ndarray:
    """Bands in 0-255 units: per-band 1-99 percentile stretch unless a uint8 image."""
    if stretch is False or (stretch is None and uint8):
        return image
    flat = image.reshape(image.shape[0], -1)
    sample = flat[:, :: max(1, flat.shape[1] // 200_000)]
    lo, hi = np.percentile(sample, [1.0, 99.0], axis=1)[:, :, None, None]
    return ((image - lo) * (255.0 / np.maximum(hi - lo, 1e-12))).astype(np.float32)


def _to_numpy(x: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    a = x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim != 3 or min(a.shape) < 1:
        raise DataError(f"{name} must be a non-empty [C, H, W] array, got shape {a.shape}")
    return a.astype(np.float32, copy=False)


def _softmax0(energy: np.ndarray) -> np.ndarray:
    energy -= energy.max(0, keepdims=True)
    np.exp(energy, out=energy)
    energy /= energy.sum(0, keepdims=True)
    return energy


def dense_crf(
    probs: Array,
    image: np.ndarray | torch.Tensor,
    n_iter: int = 5,
    sxy_gaussian: float = 3.0,
    w_gaussian: float = 3.0,
    sxy_bilateral: float = 80.0,
    srgb_bilateral: float = 13.0,
    w_bilateral: float = 10.0,
    stretch: bool | None = None,
    eps: float = 1e-8,
) -> Array:
    """Refine class probabilities ``probs [K, H, W]`` with a dense CRF guided by ``image``.

    ``image [C, H, W]`` gives the appearance features (any number of bands; all are
    used). ``srgb_bilateral`` is in 0-255 units: a uint8 image is used as is, other
    dtypes are stretched per band from their 1st-99th percentiles to 0-255 first
    (``stretch=None``, the default; force with ``True``/``False``). Positions are in
    pixels. ``w_*`` are the Potts weights of the two kernels (``pydensecrf``'s
    ``compat``; 0 switches a kernel off); the unary is ``-log(max(probs, eps))``.
    Returns float32 probabilities of the same kind (numpy or torch, same device) and
    shape; ``n_iter=0`` returns ``probs`` unchanged. See the module docstring for
    the approximations and memory.
    """
    if n_iter < 0:
        raise ConfigError(f"n_iter must be >= 0, got {n_iter}")
    if min(sxy_gaussian, sxy_bilateral, srgb_bilateral) <= 0:
        raise ConfigError("sxy_gaussian, sxy_bilateral and srgb_bilateral must be > 0")
    if n_iter == 0:
        return probs
    p = _to_numpy(probs, "probs")
    img = _to_numpy(image, "image")
    k, h, w = p.shape
    if img.shape[1:] != (h, w):
        raise DataError(f"image {img.shape} and probs {p.shape} differ in height/width")
    uint8 = str(getattr(image, "dtype", "")).endswith("uint8")
    lattice = norm_b = norm_g = None
    if w_bilateral:  # first, so that its build peak does not add to the iteration arrays
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / np.float32(sxy_bilateral)
        bands = _stretch(img, stretch, uint8) / np.float32(srgb_bilateral)
        del img
        feats = np.concatenate([xx[None], yy[None], bands]).reshape(2 + bands.shape[0], -1).T
        del yy, xx, bands
        lattice = PermutohedralLattice(feats)
        del feats
        norm_b = 1.0 / np.sqrt(np.maximum(lattice.filter(np.ones((1, h * w), np.float32)), 1e-20))
    if w_gaussian:
        norm_g = 1.0 / np.sqrt(
            np.maximum(_gaussian_filter(np.ones((1, h, w), np.float32), sxy_gaussian), 1e-20)
        )
        norm_g = norm_g.reshape(1, -1)
    unary = np.log(np.maximum(p, np.float32(eps))).reshape(k, -1)  # -U, [K, N]
    q = _softmax0(unary.copy())
    for _ in range(n_iter):
        energy = unary.copy()
        if norm_g is not None:
            msg = _gaussian_filter((q * norm_g).reshape(k, h, w), sxy_gaussian)
            energy += np.float32(w_gaussian) * norm_g * msg.reshape(k, -1)
        if lattice is not None:
            energy += np.float32(w_bilateral) * norm_b * lattice.filter(q * norm_b)
        q = _softmax0(energy)
    out = q.reshape(k, h, w)
    if isinstance(probs, torch.Tensor):
        return torch.from_numpy(out).to(probs.device)
    return out
