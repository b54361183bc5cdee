"""Global dense vocabulary index over all categorical columns.

Every (column, value) pair known to the vocabulary gets its own index in
[0, V). Column c owns the block [offsets[c], offsets[c] + cardinalities[c]).
With an OOV slot (the default for vocabularies fitted on a training split)
the block's first index `offsets[c]` is column c's out-of-vocabulary index:
values unseen in training (or seen fewer than `min_count` times) map there;
known values follow in order of decreasing training frequency (ties by
ascending id). Without an OOV slot, unknown values map to -1.

`frequency_order` relabels such an index by training frequency over all
columns, so that index 0 is the most frequent value: the order that
`MemRecEmbedding(num_head_rows=H)` assumes (indices below H own a row each).
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np


class Vocabulary:
    """Maps raw int64 ids [N, C] to global dense indices [N, C].

    Args:
      values: Per column, the known raw ids in index order.
      oov: Whether each column's block starts with an OOV slot.

    Attributes:
      values: As given (int64 arrays).
      oov: As given.
      cardinalities: int64 [C], block sizes (known values + OOV slot).
      offsets: int64 [C], block starts.
      size: V, the total number of indices.
    """

    def __init__(self, values: Sequence[np.ndarray], oov: bool = True):
        self.values: List[np.ndarray] = [np.asarray(v, np.int64) for v in values]
        self.oov = bool(oov)
        extra = 1 if self.oov else 0
        self.cardinalities = np.array([len(v) + extra for v in self.values], np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.cardinalities)[:-1]]).astype(np.int64)
        self.size = int(self.cardinalities.sum())
        self._order = [np.argsort(v, kind="stable") for v in self.values]
        self._sorted = [v[o] for v, o in zip(self.values, self._order)]

    @classmethod
    def fit(cls, ids: np.ndarray, min_count: int = 1) -> "Vocabulary":
        """Builds a vocabulary (with OOV slots) from training ids.

        Args:
          ids: int64 [N, C] raw ids of the training split.
          min_count: Minimum training count for a value to get its own index.

        Returns:
          The vocabulary.
        """
        ids = np.asarray(ids, np.int64)
        values = []
        for c in range(ids.shape[1]):
            uniq, counts = np.unique(ids[:, c], return_counts=True)
            keep = counts >= min_count
            uniq, counts = uniq[keep], counts[keep]
            # np.unique sorts ids ascending; a stable sort on -count keeps
            # that as the tie order.
            values.append(uniq[np.argsort(-counts, kind="stable")])
        return cls(values, oov=True)

    @classmethod
    def ranges(cls, cardinalities: Sequence[int]) -> "Vocabulary":
        """A vocabulary whose raw ids already are the global index (libFM).

        Column c's known ids are offsets[c] .. offsets[c] + cardinalities[c]-1
        and there is no OOV slot.
        """
        starts = np.concatenate([[0], np.cumsum(cardinalities)[:-1]])
        return cls([np.arange(s, s + n) for s, n in zip(starts, cardinalities)], oov=False)

    @property
    def oov_indices(self) -> Optional[np.ndarray]:
        """int64 [C] OOV index of each column, or None without OOV slots."""
        return self.offsets.copy() if self.oov else None

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Raw ids [N, C] -> global indices [N, C] (int64).

        Raises:
          ValueError: If `ids` does not have one column per vocabulary column.
        """
        ids = np.asarray(ids, np.int64)
        if ids.ndim != 2 or ids.shape[1] != len(self.values):
            raise ValueError(f"ids must be [N, {len(self.values)}], got shape {ids.shape}")
        out = np.empty(ids.shape, np.int64)
        extra = 1 if self.oov else 0
        unknown = -1
        for c in range(ids.shape[1]):
            col, ref = ids[:, c], self._sorted[c]
            pos = np.minimum(np.searchsorted(ref, col), max(len(ref) - 1, 0))
            found = (ref[pos] == col) if len(ref) else np.zeros(col.shape, bool)
            known = self.offsets[c] + extra + (self._order[c][pos] if len(ref) else 0)
            out[:, c] = np.where(found, known, self.offsets[c] if self.oov else unknown)
        return out


def frequency_order(train_index: np.ndarray, vocabulary_size: int) -> np.ndarray:
    """A relabelling of a global dense index by training frequency.

    Args:
      train_index: int64 global indices in [0, vocabulary_size) of the
        training split (any shape).
      vocabulary_size: V.

    Returns:
      int64 [V] `new` with `new[old]` the rank of index `old` by descending
      count in `train_index` (ties by ascending index; indices never seen in
      training come last). Apply it as `new[index]` to every split.

    Raises:
      ValueError: an index outside [0, V).
    """
    index = np.asarray(train_index, np.int64).reshape(-1)
    if index.size and (index.min() < 0 or index.max() >= vocabulary_size):
        bad = index[(index < 0) | (index >= vocabulary_size)][0]
        raise ValueError(f"train_index holds {bad}, outside [0, {vocabulary_size})")
    return rank_by_count(np.bincount(index, minlength=vocabulary_size))


def rank_by_count(counts: np.ndarray) -> np.ndarray:
    """int64 `new` with `new[i]` the rank of index i by descending `counts[i]`.

    Ties go by ascending index, so the order is deterministic.
    """
    counts = np.asarray(counts, np.int64)
    order = np.lexsort((np.arange(len(counts)), -counts))  # old ids, most frequent first
    new = np.empty(len(counts), np.int64)
    new[order] = np.arange(len(counts), dtype=np.int64)
    return new
