"""Synthetic Criteo-like click stream with a planted, learnable signal.

Rows have `num_dense` dense features and one categorical feature per entry
of `cardinalities`. Everything is a pure function of `(seed, stream, batch
index)`, so a stream is reproducible and its batches can be generated in
parallel and in any order.

How a row is made:
  * Categorical value of column c: a rank r in [0, N_c) drawn from a
    bounded power law, P(r) ~ (r + 1) ** -zipf_exponent (inverse CDF of
    the continuous law on [1, N_c + 1), floored), so a few values are very
    frequent and most are rare; then id = perm_c(r), a keyed bijection of
    [0, N_c) (a 4-round Feistel network with cycle walking), so that ids are
    not ordered by frequency. Ids lie in [0, N_c).
  * Dense feature j: log(1 + floor(exp(m_j + 1.2 z))), z ~ N(0, 1): the
    Criteo transform applied to heavy-tailed counts.
  * Label ~ Bernoulli(sigmoid(logit)) with
    logit = bias + sum_c w * e_c(id_c) + sum_j v_j (dense_j - m_j),
    e_c(id) uniform in [-sqrt(3), sqrt(3)] from a 64-bit hash of (seed, c,
    id), w = signal_strength * 1.5 / sqrt(C), and v_j ~ N(0, 1) *
    dense_signal / sqrt(num_dense). `logits(features)` recomputes it, e.g.
    for the best reachable AUC.

`stream` picks independent rows from the same planted model: train on
stream 0 and evaluate on stream 1.
"""
from __future__ import annotations

import math
from typing import Iterator, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

from memrec_tf.features import FeatureSpec, column_names as names
from memrec_tf.ops import signature

TERABYTE_CARDINALITIES = (
    39884406, 39043, 17289, 7420, 20263, 3, 7120, 1543, 63, 38532951, 2953546, 403346, 10,
    2208, 11938, 155, 4, 976, 14, 39979771, 25641295, 39664984, 585935, 12972, 108, 36)
"""The 26 MLPerf Criteo Terabyte cardinalities."""

PRESETS = {
    "terabyte": TERABYTE_CARDINALITIES,
    # The Terabyte shape, capped so that training runs in seconds.
    "small": tuple(min(c, 10_000) for c in TERABYTE_CARDINALITIES),
    "tiny": tuple(min(c, 1_000) for c in TERABYTE_CARDINALITIES),
}
DEFAULT_PRESET = "small"

_ROUNDS = 4
_HEAD = 1 << 15


def mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 arrays (`memrec_tf.ops.signature.mix64`)."""
    with np.errstate(over="ignore"):
        return signature.mix64(np.asarray(x, np.uint64), constant=np.uint64,
                               wrap=lambda v: v)


def _resolve_cardinalities(cardinalities) -> Tuple[int, ...]:
    if isinstance(cardinalities, str):
        if cardinalities not in PRESETS:
            raise ValueError(f"unknown cardinality preset {cardinalities!r}; "
                             f"have {sorted(PRESETS)}")
        return PRESETS[cardinalities]
    cards = tuple(int(c) for c in cardinalities)
    if not cards:
        raise ValueError("need at least one categorical feature")
    bad = [c for c in cards if c < 1]
    if bad:
        raise ValueError(f"cardinalities must be >= 1, got {bad}")
    return cards


class SyntheticCriteo:
    """Deterministic Criteo-like `(features, label)` batches.

    Args:
      cardinalities: Preset name ("small" (default), "tiny", "terabyte") or
        one cardinality per categorical feature.
      num_dense: Dense features.
      num_rows: Rows per pass; None for an endless stream.
      batch_size: Rows per batch (the last batch of a finite pass may be
        smaller).
      seed: Seed of the planted model (permutations, effects, weights) and
        of the rows.
      stream: Which independent row stream of that model to draw.
      zipf_exponent: Power-law exponent of value frequencies (> 0).
      signal_strength: Scale of the categorical effects (0: labels ignore
        the categorical features).
      dense_signal: Scale of the dense linear term.
      bias: Logit offset (the default gives a click rate near Criteo's 26%).

    Raises:
      ValueError: On a bad preset, cardinality, size or exponent.
    """

    def __init__(self, cardinalities: Union[str, Sequence[int]] = DEFAULT_PRESET, *,
                 num_dense: int = 13, num_rows: Optional[int] = None, batch_size: int = 4096,
                 seed: int = 0, stream: int = 0, zipf_exponent: float = 1.1,
                 signal_strength: float = 1.0, dense_signal: float = 0.5, bias: float = -1.5):
        self.cardinalities = _resolve_cardinalities(cardinalities)
        if num_dense < 0 or batch_size < 1 or (num_rows is not None and num_rows < 0):
            raise ValueError(f"need num_dense >= 0, batch_size >= 1, num_rows >= 0 or None; got "
                             f"{num_dense}, {batch_size}, {num_rows}")
        if not zipf_exponent > 0:
            raise ValueError(f"zipf_exponent must be > 0, got {zipf_exponent}")
        self.num_dense = int(num_dense)
        self.num_rows = None if num_rows is None else int(num_rows)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.stream = int(stream)
        self.zipf_exponent = float(zipf_exponent)
        self.bias = float(bias)
        c = len(self.cardinalities)
        self.spec = FeatureSpec(dense_names=names("I", self.num_dense),
                                categorical_names=names("C", c),
                                cardinalities=self.cardinalities, id_encoding="raw")

        model = np.random.default_rng([self.seed, 0x5EED])
        self._n = np.array(self.cardinalities, np.uint64)
        bits = np.maximum(2, np.ceil(np.log2(np.maximum(self._n, 2).astype(np.float64))))
        self._half = ((bits.astype(np.int64) + 1) // 2).astype(np.uint64)
        self._mask = (np.uint64(1) << self._half) - np.uint64(1)
        self._perm_keys = model.integers(0, 2**63, size=(_ROUNDS, c), dtype=np.int64,
                                         endpoint=False).astype(np.uint64)
        self._effect_keys = model.integers(0, 2**63, size=c, dtype=np.int64).astype(np.uint64)
        self._weight = float(signal_strength) * 1.5 / math.sqrt(c)
        self._dense_mean = model.uniform(0.0, 3.0, size=self.num_dense)
        self._dense_weight = (model.normal(size=self.num_dense) * float(dense_signal)
                              / math.sqrt(max(self.num_dense, 1)))
        # Inverse-CDF constants of the bounded power law, per column.
        top = self._n.astype(np.float64) + 1.0
        a = self.zipf_exponent
        self._zipf_scale = np.log(top) if a == 1.0 else top ** (1.0 - a) - 1.0
        self._build_head_tables()

    # Pieces ----------------------------------------------------------------

    @property
    def num_batches(self) -> Optional[int]:
        """Batches per pass, or None for an endless stream."""
        return None if self.num_rows is None else -(-self.num_rows // self.batch_size)

    def _feistel(self, x, cols):
        half, mask = self._half[cols], self._mask[cols]
        left, right = x >> half, x & mask
        for r in range(_ROUNDS):
            left, right = right, left ^ (mix64(right ^ self._perm_keys[r, cols]) & mask)
        return (left << half) | right

    def _permute(self, ranks: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """perm_c(rank) for flat arrays of ranks and their columns."""
        y = self._feistel(ranks.astype(np.uint64), cols)
        limit = self._n[cols]
        # Cycle walking: a permutation of [0, 2**bits) restricted to [0, N)
        # by re-applying it until the value lands inside.
        todo = np.flatnonzero(y >= limit)
        while todo.size:
            y[todo] = self._feistel(y[todo], cols[todo])
            todo = todo[y[todo] >= limit[todo]]
        return y.astype(np.int64)

    def _build_head_tables(self):
        # Most draws fall on the first ranks, so ids (and their effects) of
        # ranks below _HEAD are tabulated once; the rest are computed.
        head = np.minimum(np.array(self.cardinalities, np.int64), _HEAD)
        self._head_size = head
        self._head_offsets = np.concatenate([[0], np.cumsum(head)[:-1]]).astype(np.int64)
        cols = np.repeat(np.arange(len(head)), head)
        ranks = np.arange(int(head.sum()), dtype=np.int64) - self._head_offsets[cols]
        self._head_ids = self._permute(ranks, cols)
        self._head_effects = self._effects_flat(self._head_ids, cols)

    def ranks_to_ids(self, ranks: np.ndarray) -> np.ndarray:
        """The keyed bijection rank -> id of each column ([B, C] int64)."""
        ids, _ = self._ids_and_effects(np.asarray(ranks, np.int64))
        return ids

    def _ids_and_effects(self, ranks: np.ndarray):
        in_head = ranks < self._head_size
        slot = self._head_offsets + np.minimum(ranks, self._head_size - 1)
        ids = self._head_ids[slot]
        effects = self._head_effects[slot]
        tail = np.flatnonzero(~in_head)
        if tail.size:
            cols = np.broadcast_to(np.arange(ranks.shape[1]), ranks.shape).ravel()[tail]
            tail_ids = self._permute(ranks.ravel()[tail], cols)
            ids.ravel()[tail] = tail_ids
            effects.ravel()[tail] = self._effects_flat(tail_ids, cols)
        return ids, effects

    def sample_ranks(self, uniform: np.ndarray) -> np.ndarray:
        """Power-law ranks [B, C] from uniforms in [0, 1) [B, C]."""
        a = self.zipf_exponent
        if a == 1.0:
            x = np.exp(uniform * self._zipf_scale)
        else:
            x = (1.0 + uniform * self._zipf_scale) ** (1.0 / (1.0 - a))
        ranks = np.floor(x).astype(np.int64) - 1
        return np.clip(ranks, 0, np.array(self.cardinalities, np.int64) - 1)

    def _effects_flat(self, ids: np.ndarray, cols: np.ndarray) -> np.ndarray:
        h = mix64(ids.astype(np.uint64) ^ self._effect_keys[cols])
        unit = (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
        return (2.0 * unit - 1.0) * math.sqrt(3.0)

    def effects(self, ids: np.ndarray) -> np.ndarray:
        """Planted effect e_c(id) of each entry ([B, C] float64, unit variance)."""
        ids = np.asarray(ids, np.int64)
        cols = np.broadcast_to(np.arange(ids.shape[1]), ids.shape).ravel()
        return self._effects_flat(ids.ravel(), cols).reshape(ids.shape)

    def logits(self, features) -> np.ndarray:
        """The planted logit of each row (float64 [B])."""
        logit = self.bias + self._weight * self.effects(features["categorical"]).sum(axis=1)
        dense = np.asarray(features["dense"], np.float64)
        if self.num_dense:
            logit = logit + (dense - self._dense_mean) @ self._dense_weight
        return logit

    # Batches ---------------------------------------------------------------

    def batch(self, index: int) -> Tuple[dict, np.ndarray]:
        """Batch `index` of the stream (numpy `(features, label)`)."""
        index = int(index)
        size = self.batch_size
        if self.num_rows is not None:
            size = min(size, self.num_rows - index * self.batch_size)
            if size <= 0:
                raise IndexError(f"batch {index} is past the end ({self.num_batches} batches)")
        rng = np.random.default_rng([self.seed, self.stream, index])
        ids, effects = self._ids_and_effects(
            self.sample_ranks(rng.random((size, len(self.cardinalities)))))
        counts = np.floor(np.exp(self._dense_mean + 1.2 * rng.standard_normal(
            (size, self.num_dense))))
        dense = np.log1p(counts).astype(np.float32)
        features = {"dense": dense, "categorical": ids}
        logit = self.bias + self._weight * effects.sum(axis=1)
        if self.num_dense:
            logit += (dense - self._dense_mean) @ self._dense_weight
        label = (rng.random(size) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
        return features, label

    def iter_batches(self) -> Iterator[Tuple[dict, np.ndarray]]:
        """Yields the numpy batches of one pass (forever if num_rows is None)."""
        index = 0
        while self.num_batches is None or index < self.num_batches:
            yield self.batch(index)
            index += 1

    def _batch_tuple(self, index):
        features, label = self.batch(index)
        return features["dense"], features["categorical"], label

    def dataset(self, num_parallel_calls: int = tf.data.AUTOTUNE,
                prefetch: bool = True) -> tf.data.Dataset:
        """A `tf.data.Dataset` of `(features, label)` batches.

        Batches are made in parallel but always come in the same order with
        the same content.

        Args:
          num_parallel_calls: Batches generated at once.
          prefetch: Append `.prefetch(tf.data.AUTOTUNE)`.

        Returns:
          The dataset (infinite when num_rows is None).
        """
        indices = (tf.data.Dataset.counter() if self.num_batches is None
                   else tf.data.Dataset.range(self.num_batches))
        d, c = self.num_dense, len(self.cardinalities)

        def make(index):
            dense, cat, label = tf.numpy_function(
                self._batch_tuple, [index], [tf.float32, tf.int64, tf.float32], stateful=False)
            dense.set_shape([None, d])
            cat.set_shape([None, c])
            label.set_shape([None])
            return {"dense": dense, "categorical": cat}, label

        ds = indices.map(make, num_parallel_calls=num_parallel_calls, deterministic=True)
        if prefetch:
            ds = ds.prefetch(tf.data.AUTOTUNE)
        return ds
