"""What every categorical embedding here shares: ids [B, F] -> [B, F, d], and bytes."""
import tensorflow as tf

from memrec_tf import features
from memrec_tf.sizing import tables

keras = tf.keras


def positive_ints(name, values, count):
    values = list(values)
    if len(values) != count or not all(isinstance(v, int) and v > 0 for v in values):
        raise ValueError(f"{name} must be {count} positive ints (one per feature), got {values!r}")
    return values


def per_feature_ints(name, value, count):
    """An int or a list of ints -> a list of `count` positive ints."""
    if isinstance(value, int):
        value = [value] * count
    return positive_ints(name, value, count)


class CategoricalEmbedding(keras.layers.Layer):
    """Base of the embeddings here: ids [B, F] -> [B, F, output_dim].

    Args:
      output_dim: d, the embedding width.
      cardinalities: per feature, its number of values (hashed ids: the range
        they are reduced into).
      vocabulary_size: V > 0: ids are global dense indices in [0, V).
      dense_ids: True: column j holds dense indices in [0, cardinalities[j]).
      seed: seeds the hash of hashed ids.
      **kwargs: passed to `keras.layers.Layer`.

    Raises:
      ValueError: an argument out of range (the message quotes it).
    """

    def __init__(self, output_dim, cardinalities, vocabulary_size=0, dense_ids=False,
                 seed=0, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(output_dim, int) or output_dim < 1:
            raise ValueError(f"output_dim must be a positive int, got {output_dim!r}")
        if not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        # FeatureSpec validates the cardinalities and the id-space flags.
        spec = features.FeatureSpec.of(0, list(cardinalities), vocabulary_size, bool(dense_ids))
        self.output_dim = output_dim
        self.cardinalities = list(spec.cardinalities)
        self.vocabulary_size = vocabulary_size
        self.dense_ids = bool(dense_ids)
        self.seed = seed

    @property
    def num_features(self):
        return len(self.cardinalities)

    @property
    def id_space(self):
        return features.id_space(self.vocabulary_size, self.dense_ids)

    def table_shapes(self):
        """[(rows, width)] of every table this layer creates."""
        raise NotImplementedError

    @property
    def mapping_bytes(self):
        """Bytes of an id -> index mapping this layer holds (none here)."""
        return 0

    def stored_bytes(self, table_dtype):
        """Bytes of its tables stored for serving as `table_dtype` (see
        `memrec_tf.sizing.tables`)."""
        return tables.stored_table_bytes(self.table_shapes(), table_dtype)

    def embedding_bytes(self, table_dtype=None):
        """`sizing.EmbeddingBytes`: its tables, its mapping, and the full tables.

        Args:
          table_dtype: None: the tables at the layer's dtype, against full
            tables at that dtype. "float32", "bfloat16" or "int8": the bytes
            as served in that format (`stored_bytes`), against float32 full
            tables.
        The full space is V rows for global ids, else the sum of cardinalities.
        """
        if table_dtype is not None:
            full = tables.full_table_bytes(self.cardinalities, self.vocabulary_size,
                                           self.output_dim)
            return tables.EmbeddingBytes(self.stored_bytes(table_dtype), full,
                                         self.mapping_bytes)
        size = tables.dtype_size(self.variable_dtype)
        full = features.full_rows(self.cardinalities, self.vocabulary_size)
        return tables.EmbeddingBytes(tables.table_bytes(self.table_shapes(), size),
                                     full * self.output_dim * size, self.mapping_bytes)

    def _check_input_shape(self, input_shape):
        shape = tuple(input_shape)
        if len(shape) != 2 or shape[-1] != self.num_features:
            raise ValueError(f"{type(self).__name__} needs ids [batch, {self.num_features}] "
                             f"(one column per feature), got shape {shape}")

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.output_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(output_dim=self.output_dim, cardinalities=list(self.cardinalities),
                      vocabulary_size=self.vocabulary_size, dense_ids=self.dense_ids,
                      seed=self.seed)
        return config
