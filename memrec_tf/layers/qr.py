"""Quotient-remainder compositional embeddings (Shi et al., KDD 2020)."""
import tensorflow as tf

from memrec_tf import features
from memrec_tf.layers import ids as ids_lib
from memrec_tf.layers.categorical import CategoricalEmbedding, per_feature_ints, positive_ints

keras = tf.keras

COMBINES = ("product", "sum")


@keras.utils.register_keras_serializable(package="memrec_tf")
class QREmbedding(CategoricalEmbedding):
    """Quotient-remainder compositional embedding (Shi et al., KDD 2020).

    Index v reads remainder row v mod R and quotient row (v // R) mod Q and
    combines them elementwise: distinct v below R * Q read distinct row pairs.
    Shared (per_feature=False): v is the index in one space of all features
    (global ids as they are; per-feature indices, dense or hashed into their
    cardinality, shifted by the feature's offset) and one pair of tables
    serves all. Per feature: v is the feature's own index and each feature has
    its own R_j, Q_j (needs hashed or per-feature dense ids).

    Args:
      output_dim, cardinalities, vocabulary_size, dense_ids, seed: see
        `CategoricalEmbedding`.
      remainder_rows: R (an int; per feature: an int or one per feature).
      quotient_rows: Q, likewise; None: the smallest Q with R * Q covering
        the index space (of each feature).
      per_feature: own tables per feature instead of one shared pair.
      combine: "product" (the paper's best) or "sum".
      embeddings_initializer: initializer of the remainder table (and of the
        quotient table with "sum").
      quotient_initializer: initializer of the quotient table; None: around 1
        (N(1, 0.1)) for "product", so that a fresh product is close to the
        remainder row, else embeddings_initializer.
      **kwargs: passed to `keras.layers.Layer`.

    Raises:
      ValueError: an argument out of range, or per_feature with global ids.
    """

    def __init__(self, output_dim, cardinalities, remainder_rows, quotient_rows=None,
                 per_feature=False, combine="product", embeddings_initializer="uniform",
                 quotient_initializer=None, vocabulary_size=0, dense_ids=False, seed=0,
                 **kwargs):
        super().__init__(output_dim, cardinalities, vocabulary_size, dense_ids, seed, **kwargs)
        if combine not in COMBINES:
            raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
        if per_feature and vocabulary_size:
            raise ValueError("per_feature QR needs per-feature indices (hashed ids or "
                             "dense_ids=True), got global ids (vocabulary_size="
                             f"{vocabulary_size})")
        self.per_feature = bool(per_feature)
        self.combine = combine
        spaces = (self.cardinalities if per_feature
                  else [features.full_rows(self.cardinalities, vocabulary_size)])
        if per_feature:
            rem = per_feature_ints("remainder_rows", remainder_rows, len(spaces))
        else:
            rem = positive_ints("remainder_rows", [remainder_rows], 1)
        if quotient_rows is None:
            quo = [-(-v // r) for v, r in zip(spaces, rem)]
        elif per_feature:
            quo = per_feature_ints("quotient_rows", quotient_rows, len(spaces))
        else:
            quo = positive_ints("quotient_rows", [quotient_rows], 1)
        self.remainder_rows = rem
        self.quotient_rows = quo
        self._initializer = keras.initializers.get(embeddings_initializer)
        self._quotient_initializer_given = quotient_initializer is not None
        if quotient_initializer is not None:
            self._quotient_initializer = keras.initializers.get(quotient_initializer)
        elif combine == "product":
            self._quotient_initializer = keras.initializers.RandomNormal(mean=1.0, stddev=0.1,
                                                                         seed=seed)
        else:
            self._quotient_initializer = keras.initializers.get(embeddings_initializer)

    def build(self, input_shape):
        self._check_input_shape(input_shape)
        # Per-feature tables live end to end in one variable each: the same
        # rows and bytes as separate tables, read by one gather.
        self.remainder_table = self.add_weight(
            name="remainder_table", shape=(sum(self.remainder_rows), self.output_dim),
            initializer=self._initializer, trainable=True)
        self.quotient_table = self.add_weight(
            name="quotient_table", shape=(sum(self.quotient_rows), self.output_dim),
            initializer=self._quotient_initializer, trainable=True)
        self.built = True

    def table_shapes(self):
        return [(sum(self.remainder_rows), self.output_dim),
                (sum(self.quotient_rows), self.output_dim)]

    def rows(self, ids):
        """(remainder rows, quotient rows) of every id [B, F], as int64 [B, F] each."""
        if self.per_feature:
            index = ids_lib.feature_index(ids, self.cardinalities, self.dense_ids, self.seed)
            count = self.num_features
        else:
            index = ids_lib.global_index(ids, self.cardinalities, self.vocabulary_size,
                                          self.dense_ids, self.seed)
            count = 1
        rem = tf.constant(self.remainder_rows, tf.int64)
        quo = tf.constant(self.quotient_rows, tf.int64)
        rem_offset = tf.constant(features.feature_offsets(self.remainder_rows), tf.int64)
        quo_offset = tf.constant(features.feature_offsets(self.quotient_rows), tf.int64)
        if count == 1:  # one pair of tables: the same R and Q for every column
            rem, quo, rem_offset, quo_offset = rem[0], quo[0], rem_offset[0], quo_offset[0]
        remainder = tf.math.floormod(index, rem) + rem_offset
        quotient = tf.math.floormod(tf.math.floordiv(index, rem), quo) + quo_offset
        return remainder, quotient

    def call(self, inputs):
        remainder, quotient = self.rows(inputs)
        r = tf.gather(tf.convert_to_tensor(self.remainder_table), remainder)
        q = tf.gather(tf.convert_to_tensor(self.quotient_table), quotient)
        return r * q if self.combine == "product" else r + q

    def get_config(self):
        config = super().get_config()
        config.update(
            remainder_rows=(list(self.remainder_rows) if self.per_feature
                            else self.remainder_rows[0]),
            quotient_rows=(list(self.quotient_rows) if self.per_feature
                           else self.quotient_rows[0]),
            per_feature=self.per_feature, combine=self.combine,
            embeddings_initializer=keras.initializers.serialize(self._initializer),
            quotient_initializer=(keras.initializers.serialize(self._quotient_initializer)
                                  if self._quotient_initializer_given else None))
        return config
