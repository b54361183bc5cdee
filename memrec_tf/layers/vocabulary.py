"""Raw ids -> frequency-ordered dense indices inside the model, then an embedding.

The vocabulary signatures of `MemRecEmbedding` (`vocabulary_size`,
`num_head_rows`) need dense indices ordered by training frequency. A model
trained from raw click-log ids gets them from `VocabularyLookup`: the
training file's distinct ids per feature (counted by
`memrec_tf.data.count_values`), stored as two int64 weights of the
model, so the SavedModel maps raw ids itself with built-in ops (a binary
search per feature) and any server runs it.

Index layout: every feature owns one out-of-vocabulary (OOV) index and one
index per training value, in one space of V = sum(values + 1) indices,
numbered by descending training count over all features (ties by feature,
then by ascending id; the OOV indices, never seen in training, come last).
This is `memrec_tf.data.Vocabulary.fit` followed by
`memrec_tf.data.frequency_order`, the layout of the accuracy benchmarks.
"""
from typing import Sequence, Tuple

import numpy as np
import tensorflow as tf

from memrec_tf.data.counting import counted_cardinalities
from memrec_tf.data.vocab import rank_by_count
from memrec_tf import features
from memrec_tf.sizing import tables
from memrec_tf.layers.categorical import CategoricalEmbedding

keras = tf.keras


def frequency_index(counted: Sequence[Tuple[np.ndarray, np.ndarray]]):
    """The index of every counted value, by descending training count.

    Args:
      counted: per feature, `(values, counts)`: its distinct raw ids in
        ascending order and their training counts (`count_values`).

    Returns:
      `(keys, indices, oov_indices, counts)`: int64 keys (the values, feature
      after feature), int64 indices [len(keys)] in [0, V), int64
      oov_indices [F] and int64 counts [V] (the training count of every
      index; 0 for the OOV ones), V = len(keys) + F.

    Raises:
      ValueError: a feature's values are not strictly ascending, or values
        and counts differ in length.
    """
    keys, old_counts = [], []
    for j, (values, counts) in enumerate(counted):
        values = np.asarray(values, np.int64)
        counts = np.asarray(counts, np.int64)
        if values.shape != counts.shape or values.ndim != 1:
            raise ValueError(f"feature {j}: values {values.shape} and counts {counts.shape} "
                             "must be 1-d and of one length")
        if np.any(values[1:] <= values[:-1]):
            raise ValueError(f"feature {j}: values must be distinct and ascending")
        keys.append(values)
        old_counts.append(np.concatenate([[0], counts]))  # the feature's OOV index first
    old_counts = np.concatenate(old_counts) if old_counts else np.zeros(0, np.int64)
    new = rank_by_count(old_counts)
    starts = np.cumsum([0] + [len(k) + 1 for k in keys])[:-1]
    oov = new[starts]
    indices = np.concatenate([new[s + 1:s + 1 + len(k)] for s, k in zip(starts, keys)]
                             or [np.zeros(0, np.int64)])
    counts = np.empty(len(new), np.int64)
    counts[new] = old_counts
    return (np.concatenate(keys or [np.zeros(0, np.int64)]), indices, oov, counts)


@keras.utils.register_keras_serializable(package="memrec_tf")
class VocabularyLookup(keras.layers.Layer):
    """Raw ids [B, F] -> dense indices [B, F] in [0, V), built-in ops only.

    Column j's known ids are a sorted block of the `keys` weight; an id is
    found by binary search and replaced by its entry of `indices`, an
    unknown id by the column's OOV index. The weights cost 16 bytes per
    known value (two int64) plus 8 per feature.

    Args:
      column_sizes: per feature, the number of known values.
      **kwargs: passed to `keras.layers.Layer`.
    """

    def __init__(self, column_sizes, **kwargs):
        super().__init__(**kwargs)
        sizes = list(column_sizes)
        if not sizes or not all(isinstance(n, int) and n >= 0 for n in sizes):
            raise ValueError(f"column_sizes must be ints >= 0, one per feature, got {sizes!r}")
        self.column_sizes = sizes
        self.vocabulary_size = sum(self.column_sizes) + len(self.column_sizes)

    def build(self, input_shape=None):
        if self.built:
            return
        total = sum(self.column_sizes)
        self.keys = self.add_weight(name="keys", shape=(total,), dtype="int64",
                                    initializer="zeros", trainable=False)
        self.indices = self.add_weight(name="indices", shape=(total,), dtype="int64",
                                       initializer="zeros", trainable=False)
        self.oov_indices = self.add_weight(name="oov_indices", shape=(len(self.column_sizes),),
                                           dtype="int64", initializer="zeros", trainable=False)
        self.built = True

    def set_vocabulary(self, keys, indices, oov_indices):
        """Stores the arrays of `frequency_index`.

        Raises:
          ValueError: shapes that do not match `column_sizes`.
        """
        self.build()
        arrays = {"keys": (keys, self.keys), "indices": (indices, self.indices),
                  "oov_indices": (oov_indices, self.oov_indices)}
        for name, (value, variable) in arrays.items():
            value = np.asarray(value, np.int64)
            if value.shape != tuple(variable.shape):
                raise ValueError(f"{name} has shape {value.shape}, "
                                 f"expected {tuple(variable.shape)}")
            variable.assign(value)

    @property
    def mapping_bytes(self):
        """Bytes of the lookup's weights."""
        return tables.vocabulary_mapping_bytes([n + 1 for n in self.column_sizes])

    def call(self, ids):
        ids = tf.convert_to_tensor(ids)
        if ids.shape.rank != 2 or ids.shape[-1] != len(self.column_sizes):
            raise ValueError(f"VocabularyLookup needs ids [batch, {len(self.column_sizes)}] "
                             f"(one column per feature), got shape {ids.shape}")
        ids = tf.cast(ids, tf.int64)
        columns, start = [], 0
        for j, size in enumerate(self.column_sizes):
            column = ids[:, j]
            if size == 0:
                columns.append(tf.fill(tf.shape(column), self.oov_indices[j]))
                continue
            keys = self.keys[start:start + size]
            pos = tf.minimum(tf.searchsorted(keys, column), size - 1)
            found = tf.equal(tf.gather(keys, pos), column)
            known = tf.gather(self.indices[start:start + size], pos)
            columns.append(tf.where(found, known, self.oov_indices[j]))
            start += size
        return tf.stack(columns, axis=1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(column_sizes=list(self.column_sizes))
        return config


@keras.utils.register_keras_serializable(package="memrec_tf")
class VocabularyEmbedding(CategoricalEmbedding):
    """An embedding of global dense indices behind a `VocabularyLookup`.

    Reads raw (hashed) ids [B, F]; the lookup maps them to the indices the
    inner embedding (any method of `memrec_tf.models.METHODS`, built for
    vocabulary_size=V) reads. The bytes it reports are the inner tables'
    against V full rows (the base class's count); the lookup's own bytes are
    `mapping_bytes`.

    Args:
      output_dim: d.
      cardinalities: per feature, its known values + 1 (the OOV index).
      method: the inner embedding's method.
      method_options: the inner layer's own options (e.g. num_token_rows,
        num_head_rows for "memrec").
      seed: seeds the inner layer.
      **kwargs: passed to `keras.layers.Layer`.
    """

    def __init__(self, output_dim, cardinalities, method="memrec", method_options=None,
                 vocabulary_size=0, dense_ids=False, seed=0, **kwargs):
        from memrec_tf.layers import make_embedding  # pylint: disable=g-import-not-at-top

        super().__init__(output_dim, cardinalities, 0, False, seed, **kwargs)
        if vocabulary_size or dense_ids:
            raise ValueError("VocabularyEmbedding reads raw ids; it takes no vocabulary_size "
                             "or dense_ids")
        self.method = method
        self.method_options = dict(method_options or {})
        self.lookup = VocabularyLookup([c - 1 for c in self.cardinalities], name="lookup")
        spec = features.FeatureSpec.of(0, list(self.cardinalities),
                                       self.lookup.vocabulary_size)
        self.inner = make_embedding(method, spec, output_dim, seed=seed, name="inner",
                                    **self.method_options)

    def build(self, input_shape):
        self._check_input_shape(input_shape)
        self.lookup.build(input_shape)
        self.inner.build(tuple(input_shape))
        self.built = True

    def table_shapes(self):
        return self.inner.table_shapes()

    @property
    def mapping_bytes(self):
        return self.lookup.mapping_bytes

    def call(self, inputs):
        return self.inner(self.lookup(inputs))

    def get_config(self):
        config = super().get_config()
        config.update(method=self.method, method_options=dict(self.method_options))
        return config


def vocabulary_embedding(method, counted, output_dim, seed=0, name="embedding",
                         **method_options) -> VocabularyEmbedding:
    """A `VocabularyEmbedding` holding the frequency index of `counted`.

    Args:
      method: the inner embedding's method.
      counted: per feature, `(values, counts)` as `frequency_index` takes.
      output_dim, seed, name: the layer's.
      **method_options: the inner layer's own options.
    """
    keys, indices, oov, _ = frequency_index(counted)
    layer = VocabularyEmbedding(output_dim, counted_cardinalities(counted), method=method,
                                method_options=method_options, seed=seed, name=name)
    layer.lookup.set_vocabulary(keys, indices, oov)
    return layer
