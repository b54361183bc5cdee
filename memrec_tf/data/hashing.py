"""Stable string -> int64 ids for categorical values.

Ids of string categories are `FarmHash Fingerprint64(key) mod (2**63 - 1)`,
computed by `tf.strings.to_hash_bucket_fast`, so they lie in
[0, 2**63 - 2], are the same on every machine, run and Python version
(unlike Python's `hash()`), and can be recomputed in a TensorFlow graph.
`key` is the value's UTF-8 bytes, prefixed with `column + "\\x1f"` when the
column is given: the same string in two columns (user "5", item "5") then
gets two ids, which matters when columns share one hashed embedding table.

An empty value maps to `EMPTY_ID` (-1), a reserved id no hash produces.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

EMPTY_ID = -1
"""Id of an empty categorical field, in every reader."""

NUM_HASH_BUCKETS = 2**63 - 1
COLUMN_SEPARATOR = "\x1f"


def hash_strings_tf(values: tf.Tensor, columns: Optional[Sequence[str]] = None) -> tf.Tensor:
    """Hashes a string tensor to int64 ids inside a graph.

    Args:
      values: tf.string tensor [..., C] (any shape when `columns` is None).
      columns: Optional C column names, one per last-axis position, used as
        hash salt.

    Returns:
      int64 tensor of the same shape; empty strings map to `EMPTY_ID`.
    """
    values = tf.convert_to_tensor(values, tf.string)
    keys = values
    if columns is not None:
        prefixes = tf.constant([c + COLUMN_SEPARATOR for c in columns], tf.string)
        keys = tf.strings.join([tf.broadcast_to(prefixes, tf.shape(values)), values])
    ids = tf.strings.to_hash_bucket_fast(keys, NUM_HASH_BUCKETS)
    return tf.where(tf.equal(values, ""), tf.constant(EMPTY_ID, tf.int64), ids)


def _as_bytes(value) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes):
        return value
    raise TypeError(f"categorical values must be str or bytes, got {type(value).__name__} "
                    f"{value!r}")


def hash_strings(values, columns: Optional[Sequence[str]] = None) -> np.ndarray:
    """Hashes strings to int64 ids (numpy in, numpy out).

    Args:
      values: Array-like of str/bytes [..., C] (any shape when `columns` is
        None).
      columns: Optional column names (one per last-axis position) used as
        hash salt.

    Returns:
      int64 numpy array of the same shape; empty strings map to `EMPTY_ID`.

    Raises:
      ValueError: If the last axis does not have one entry per column.
      TypeError: If a value is neither str nor bytes.
    """
    array = np.asarray(values)
    if array.size == 0:
        return np.zeros(array.shape, np.int64)
    if columns is not None and (array.ndim == 0 or array.shape[-1] != len(columns)):
        raise ValueError(f"values' last axis has {array.shape[-1:]} entries for "
                         f"{len(columns)} columns")
    # Click logs repeat values a lot: hash each distinct (column, value)
    # once and gather.
    width = len(columns) if columns is not None else 1
    flat = array.reshape(-1, width)
    codes = np.empty(flat.shape, np.int64)
    distinct, distinct_cols = [], []
    for c in range(width):
        seen = {}
        codes[:, c] = [seen.setdefault(v, len(distinct) + len(seen)) for v in flat[:, c].tolist()]
        distinct.extend(_as_bytes(v) for v in seen)
        distinct_cols.extend([c] * len(seen))
    keys = np.array(distinct, dtype=object)
    if columns is not None:
        prefixes = [(col + COLUMN_SEPARATOR).encode("utf-8") for col in columns]
        keys = np.array([prefixes[c] + k for c, k in zip(distinct_cols, distinct)], dtype=object)
    ids = tf.strings.to_hash_bucket_fast(tf.constant(keys, tf.string), NUM_HASH_BUCKETS).numpy()
    empty = np.array([len(k) == 0 for k in distinct], bool)
    ids[empty] = EMPTY_ID
    return ids[codes].reshape(array.shape)
