"""Training counts of every categorical value, in one streaming pass."""
from __future__ import annotations

from typing import List, Tuple

import numpy as np

# More distinct values than this in all stop the count (its memory grows with them).
DEFAULT_LIMIT = 50_000_000


class TooManyValuesError(ValueError):
    """The data holds more distinct values than the count's limit."""


class NoRowsError(ValueError):
    """The data holds no valid row to count."""


def count_values(reader, limit: int = DEFAULT_LIMIT) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Training counts of every categorical value, in one streaming pass.

    Args:
      reader: anything with `iter_batches()` of `(features, label)` numpy
        batches (the file readers, `SyntheticCriteo`).
      limit: the most distinct values (all features together) to count.

    Returns:
      Per categorical column, `(values, counts)`: int64 arrays of the
      distinct raw ids (ascending) and how often each occurs.

    Raises:
      TooManyValuesError: more than `limit` distinct values in all.
      NoRowsError: no valid rows.
    """
    columns = None  # per column: merged (values, counts) and batches not yet merged
    for features, _ in reader.iter_batches():
        cat = np.asarray(features["categorical"])
        if columns is None:
            columns = [{"merged": (np.zeros(0, np.int64), np.zeros(0, np.int64)),
                        "pending": [], "pending_size": 0} for _ in range(cat.shape[1])]
        total = 0
        for j, column in enumerate(columns):
            values, counts = np.unique(cat[:, j], return_counts=True)
            column["pending"].append((values, counts))
            column["pending_size"] += len(values)
            # Merge once the pending uniques outgrow the merged ones: each
            # value is re-sorted O(log batches) times.
            if column["pending_size"] >= max(len(column["merged"][0]), 1 << 16):
                column["merged"] = _merge_counts([column["merged"]] + column["pending"])
                column["pending"], column["pending_size"] = [], 0
            total += len(column["merged"][0])
        if total > limit:
            raise TooManyValuesError(f"more than {limit:,} distinct categorical values")
    if columns is None:
        paths = getattr(reader, "paths", None)
        raise NoRowsError(f"no valid rows in {', '.join(paths) if paths else reader}")
    return [_merge_counts([c["merged"]] + c["pending"]) for c in columns]


def _merge_counts(parts):
    """Sums the counts of equal values over (values, counts) pairs."""
    values = np.concatenate([p[0] for p in parts]).astype(np.int64)
    counts = np.concatenate([p[1] for p in parts]).astype(np.int64)
    if not len(values):
        return values, counts
    order = np.argsort(values, kind="stable")
    values, counts = values[order], counts[order]
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    return values[starts], np.add.reduceat(counts, starts)


def counted_cardinalities(counted) -> List[int]:
    """Per feature, its counted values + 1 (an index for values never seen in
    training): the cardinalities of a model of counted data."""
    return [len(values) + 1 for values, _ in counted]
