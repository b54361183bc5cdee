"""The uncompressed baseline and the hashing trick."""
import tensorflow as tf

from memrec_tf import features
from memrec_tf.layers import ids as ids_lib
from memrec_tf.layers.categorical import CategoricalEmbedding

keras = tf.keras


@keras.utils.register_keras_serializable(package="memrec_tf")
class FullEmbedding(CategoricalEmbedding):
    """A plain `keras.layers.Embedding` per feature: the uncompressed baseline.

    Hashed ids are hashed and reduced modulo the feature's cardinality;
    per-feature dense ids index the feature's table as they are. Global ids
    read one table of V rows.

    Args:
      output_dim, cardinalities, vocabulary_size, dense_ids, seed: see
        `CategoricalEmbedding`.
      embeddings_initializer: initializer of every table.
      **kwargs: passed to `keras.layers.Layer`.
    """

    def __init__(self, output_dim, cardinalities, embeddings_initializer="uniform",
                 vocabulary_size=0, dense_ids=False, seed=0, **kwargs):
        super().__init__(output_dim, cardinalities, vocabulary_size, dense_ids, seed, **kwargs)
        self._initializer = keras.initializers.get(embeddings_initializer)
        sizes = [vocabulary_size] if vocabulary_size else self.cardinalities
        self.tables = [keras.layers.Embedding(size, output_dim,
                                              embeddings_initializer=embeddings_initializer,
                                              name=f"table_{j}")
                       for j, size in enumerate(sizes)]

    def build(self, input_shape):
        self._check_input_shape(input_shape)
        for table in self.tables:
            table.build((input_shape[0],))
        self.built = True

    def table_shapes(self):
        return [(table.input_dim, self.output_dim) for table in self.tables]

    def call(self, inputs):
        if self.vocabulary_size:
            return self.tables[0](tf.cast(inputs, tf.int64))
        index = ids_lib.feature_index(inputs, self.cardinalities, self.dense_ids, self.seed)
        return tf.stack([table(index[:, j]) for j, table in enumerate(self.tables)], axis=1)

    def get_config(self):
        config = super().get_config()
        config.update(embeddings_initializer=keras.initializers.serialize(self._initializer))
        return config


@keras.utils.register_keras_serializable(package="memrec_tf")
class HashingEmbedding(CategoricalEmbedding):
    """The hashing trick: one table of R rows, row = hash(id, feature) mod R.

    Every id, dense or not, is hashed with its feature as salt.

    Args:
      output_dim, cardinalities, vocabulary_size, dense_ids, seed: see
        `CategoricalEmbedding`.
      num_rows: R, rows of the shared table.
      embeddings_initializer: initializer of the table.
      **kwargs: passed to `keras.layers.Layer`.
    """

    def __init__(self, output_dim, cardinalities, num_rows, embeddings_initializer="uniform",
                 vocabulary_size=0, dense_ids=False, seed=0, **kwargs):
        super().__init__(output_dim, cardinalities, vocabulary_size, dense_ids, seed, **kwargs)
        if not isinstance(num_rows, int) or num_rows < 1:
            raise ValueError(f"num_rows must be a positive int, got {num_rows!r}")
        self.num_rows = num_rows
        self._initializer = keras.initializers.get(embeddings_initializer)

    def build(self, input_shape):
        self._check_input_shape(input_shape)
        self.table = self.add_weight(name="table", shape=(self.num_rows, self.output_dim),
                                     initializer=self._initializer, trainable=True)
        self.built = True

    def table_shapes(self):
        return [(self.num_rows, self.output_dim)]

    def rows(self, ids):
        """The table row of every id [B, F]."""
        return tf.math.floormod(ids_lib.hash_ids(ids, self.seed), self.num_rows)

    def call(self, inputs):
        return tf.gather(tf.convert_to_tensor(self.table), self.rows(inputs))

    def get_config(self):
        config = super().get_config()
        config.update(num_rows=self.num_rows,
                      embeddings_initializer=keras.initializers.serialize(self._initializer))
        return config
