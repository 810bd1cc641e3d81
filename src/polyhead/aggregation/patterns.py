"""Label patterns: the per-pixel tuple of annotator labels, encoded as one integer.

Pixels with the same tuple ``(l_1, ..., l_A)`` (``l_a = K`` when annotator ``a``
gave no label) have the same posterior, so an image collapses to counts of its
distinct patterns. A pattern is encoded in base ``K + 1``::

    code = sum_a l_a * (K + 1) ** a

Three regimes, chosen from the number of possible codes ``(K + 1) ** A``:

* up to ``DENSE_LIMIT`` (2**20, e.g. K=6 with A<=7, K=10 with A<=5): counts are a
  ``np.bincount`` over the codes, the fastest path;
* up to 2**62: codes still fit in int64 and are counted with ``np.unique``;
* beyond (e.g. K=6 with A>=23 annotators): each distinct tuple gets an id from a
  dictionary kept for the whole run, so memory grows with the number of *distinct*
  patterns met (at most the number of labelled pixels, usually far fewer).

In every regime memory is one strip of pixels plus the table of distinct patterns.
"""

from __future__ import annotations

import numpy as np

DENSE_LIMIT = 1 << 20
INT64_LIMIT = 1 << 62


class PatternCodec:
    """Encode ``[A, n]`` label stacks (``K`` = missing) into int64 pattern codes."""

    def __init__(self, n_classes: int, n_annotators: int) -> None:
        self.n_classes = int(n_classes)
        self.n_annotators = int(n_annotators)
        self.base = self.n_classes + 1
        self.n_codes = self.base**self.n_annotators  # Python int, may be huge
        self.dense = self.n_codes <= DENSE_LIMIT
        self.packed = self.n_codes <= INT64_LIMIT
        self._ids: dict[bytes, int] = {}
        self._tuples: list[bytes] = []
        dtype = np.uint8 if self.base <= 256 else np.uint16
        self._tuple_dtype = np.dtype(dtype)

    @property
    def all_missing(self) -> int:
        """Code of the pattern where nobody gave a label."""
        if self.packed:
            return int(self.n_codes - 1)
        return self._id_of(np.full(self.n_annotators, self.n_classes, self._tuple_dtype).tobytes())

    def _id_of(self, key: bytes) -> int:
        got = self._ids.get(key)
        if got is None:
            got = self._ids[key] = len(self._tuples)
            self._tuples.append(key)
        return got

    def encode(self, stack: np.ndarray) -> np.ndarray:
        """Codes ``[n]`` of a stack ``[A, n]`` of labels in ``[0, K]``."""
        if self.packed:
            dtype = np.int32 if self.n_codes < (1 << 31) else np.int64
            code = np.zeros(stack.shape[1], dtype=dtype)
            for a in range(self.n_annotators - 1, -1, -1):  # Horner: fewer big multiplies
                code *= self.base
                code += stack[a].astype(dtype, copy=False)
            return code.astype(np.int64, copy=False)
        tuples = np.ascontiguousarray(stack.T.astype(self._tuple_dtype))
        view = tuples.view(np.dtype((np.void, tuples.shape[1] * tuples.itemsize))).ravel()
        uniq, inverse = np.unique(view, return_inverse=True)
        ids = np.fromiter((self._id_of(u.tobytes()) for u in uniq), np.int64, uniq.size)
        return ids[inverse.ravel()]

    def count(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sorted distinct codes and their counts."""
        if self.dense:
            counts = np.bincount(codes, minlength=int(self.n_codes))
            nz = np.flatnonzero(counts)
            return nz.astype(np.int64), counts[nz].astype(np.int64)
        uniq, counts = np.unique(codes, return_counts=True)
        return uniq.astype(np.int64), counts.astype(np.int64)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Label matrix ``[n, A]`` (int64, -1 = missing) of the given codes."""
        codes = np.asarray(codes, dtype=np.int64)
        if self.packed:
            out = np.empty((codes.size, self.n_annotators), dtype=np.int64)
            rest = codes.copy()
            for a in range(self.n_annotators):
                out[:, a] = rest % self.base
                rest //= self.base
        else:
            raw = b"".join(self._tuples[int(c)] for c in codes)
            flat = np.frombuffer(raw, dtype=self._tuple_dtype).astype(np.int64)
            out = flat.reshape(codes.size, self.n_annotators)
        out[out == self.n_classes] = -1
        return out


def merge_counts(
    parts: list[tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    """Sum several ``(codes, counts)`` tables into one sorted table."""
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    codes = np.concatenate([p[0] for p in parts])
    counts = np.concatenate([p[1] for p in parts])
    uniq, inverse = np.unique(codes, return_inverse=True)
    return uniq, np.bincount(inverse.ravel(), weights=counts, minlength=uniq.size).astype(np.int64)


class CountAccumulator:
    """Running ``(codes, counts)`` table; merges pending parts when they pile up."""

    def __init__(self, codec: PatternCodec, merge_every: int = 64) -> None:
        self.codec = codec
        self.merge_every = merge_every
        self._dense: np.ndarray | None = (
            np.zeros(int(codec.n_codes), np.int64) if codec.dense else None
        )
        self._parts: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, codes: np.ndarray, counts: np.ndarray) -> None:
        """Add a ``(codes, counts)`` table."""
        if self._dense is not None:
            self._dense[codes] += counts
            return
        self._parts.append((codes, counts))
        if len(self._parts) >= self.merge_every:
            self._parts = [merge_counts(self._parts)]

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """Sorted distinct codes and their total counts."""
        if self._dense is not None:
            nz = np.flatnonzero(self._dense)
            return nz.astype(np.int64), self._dense[nz].copy()
        return merge_counts(self._parts)
