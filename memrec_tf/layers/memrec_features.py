"""MEM-REC embeddings of F features: one shared pair of tables, or a pair per feature."""
import tensorflow as tf

from memrec_tf.layers.memrec_embedding import MemRecEmbedding
from memrec_tf import features, optimizers
from memrec_tf.layers import ids as ids_lib
from memrec_tf.layers.categorical import CategoricalEmbedding, per_feature_ints

keras = tf.keras


@keras.utils.register_keras_serializable(package="memrec_tf")
class SharedMemRecEmbedding(CategoricalEmbedding):
    """One MemRecEmbedding (one token and one weight table) for all F features.

    Hashed ids go to the layer with salt_columns=True, so equal raw ids of two
    features read different rows (MEM-REC's reference design). Dense indices
    take collision-free vocabulary signatures instead: global ids as they are
    (vocabulary_size=V), per-feature ids shifted into one space of
    sum(cardinalities) values.

    Args:
      output_dim, cardinalities, vocabulary_size, dense_ids, seed: see
        `CategoricalEmbedding`.
      num_token_rows, num_hashes, num_weight_rows, num_weight_hashes,
        weight_mode, num_head_rows, implementation, embeddings_initializer,
        embedding_optimizer: those of `MemRecEmbedding` (num_head_rows only
        with dense indices).
      **kwargs: passed to `keras.layers.Layer`.
    """

    def __init__(self, output_dim, cardinalities, num_token_rows, num_hashes=2,
                 num_weight_rows=None, num_weight_hashes=1, weight_mode="scalar",
                 num_head_rows=0, implementation="auto", embeddings_initializer="uniform",
                 vocabulary_size=0, dense_ids=False, seed=0, embedding_optimizer=None,
                 **kwargs):
        super().__init__(output_dim, cardinalities, vocabulary_size, dense_ids, seed, **kwargs)
        hashed = self.id_space == "hashed"
        if hashed and num_head_rows:
            raise ValueError("num_head_rows needs dense indices (vocabulary_size or "
                             f"dense_ids=True), got num_head_rows={num_head_rows!r}")
        self.memrec = MemRecEmbedding(
            output_dim, num_token_rows, num_hashes=num_hashes, num_weight_rows=num_weight_rows,
            num_weight_hashes=num_weight_hashes, weight_mode=weight_mode, seed=seed,
            implementation=implementation, embeddings_initializer=embeddings_initializer,
            salt_columns=hashed,
            vocabulary_size=0 if hashed else features.full_rows(self.cardinalities,
                                                                vocabulary_size),
            num_head_rows=num_head_rows, embedding_optimizer=embedding_optimizer,
            name="memrec")
        self._initializer = keras.initializers.get(embeddings_initializer)

    def build(self, input_shape):
        self._check_input_shape(input_shape)
        self.memrec.build(tuple(input_shape))
        self.built = True

    def table_shapes(self):
        return self.memrec.table_shapes()

    def stored_bytes(self, table_dtype):
        return self.memrec.stored_bytes(table_dtype)

    def call(self, inputs):
        if self.id_space == "per_feature":
            inputs = ids_lib.global_index(inputs, self.cardinalities, 0, True)
        return self.memrec(inputs)

    def get_config(self):
        config = super().get_config()
        m = self.memrec
        config.update(num_token_rows=m.num_token_rows, num_hashes=m.num_hashes,
                      num_weight_rows=m.num_weight_rows, num_weight_hashes=m.num_weight_hashes,
                      weight_mode=m.weight_mode, num_head_rows=m.num_head_rows,
                      implementation=m.implementation,
                      embeddings_initializer=keras.initializers.serialize(self._initializer),
                      embedding_optimizer=optimizers.serialize(m.embedding_optimizer))
        return config


@keras.utils.register_keras_serializable(package="memrec_tf")
class PerFeatureMemRecEmbedding(CategoricalEmbedding):
    """One MemRecEmbedding, with its own tables, per feature.

    Feature j's layer reads column j: hashed ids through the random hashes,
    per-feature dense ids with vocabulary_size=cardinalities[j], global ids
    with vocabulary_size=V.

    Args:
      output_dim, cardinalities, vocabulary_size, dense_ids, seed: see
        `CategoricalEmbedding`.
      num_token_rows: an int for every feature, or one int per feature.
      num_weight_rows: likewise; None: as many as the token rows.
      num_hashes, num_weight_hashes, weight_mode, implementation,
        embeddings_initializer, embedding_optimizer: those of
        `MemRecEmbedding`, shared by all.
      num_head_rows: an int or one per feature (only with dense indices).
      **kwargs: passed to `keras.layers.Layer`.
    """

    def __init__(self, output_dim, cardinalities, num_token_rows, num_hashes=2,
                 num_weight_rows=None, num_weight_hashes=1, weight_mode="scalar",
                 num_head_rows=0, implementation="auto", embeddings_initializer="uniform",
                 vocabulary_size=0, dense_ids=False, seed=0, embedding_optimizer=None,
                 **kwargs):
        super().__init__(output_dim, cardinalities, vocabulary_size, dense_ids, seed, **kwargs)
        count = self.num_features
        token_rows = per_feature_ints("num_token_rows", num_token_rows, count)
        weight_rows = (token_rows if num_weight_rows is None
                       else per_feature_ints("num_weight_rows", num_weight_rows, count))
        if isinstance(num_head_rows, int):
            num_head_rows = [num_head_rows] * count
        head_rows = list(num_head_rows)
        if len(head_rows) != count:
            raise ValueError(f"num_head_rows must be an int or {count} ints, got {head_rows!r}")
        if self.id_space == "hashed" and any(head_rows):
            raise ValueError("num_head_rows needs dense indices (vocabulary_size or "
                             f"dense_ids=True), got num_head_rows={head_rows!r}")
        self._initializer = keras.initializers.get(embeddings_initializer)
        self.memrecs = []
        for j in range(count):
            vocab = {"hashed": 0, "per_feature": self.cardinalities[j],
                     "global": vocabulary_size}[self.id_space]
            self.memrecs.append(MemRecEmbedding(
                output_dim, token_rows[j], num_hashes=num_hashes, num_weight_rows=weight_rows[j],
                num_weight_hashes=num_weight_hashes, weight_mode=weight_mode, seed=seed,
                implementation=implementation, embeddings_initializer=embeddings_initializer,
                vocabulary_size=vocab, num_head_rows=head_rows[j],
                embedding_optimizer=embedding_optimizer, name=f"memrec_{j}"))

    def build(self, input_shape):
        self._check_input_shape(input_shape)
        for layer in self.memrecs:
            layer.build((input_shape[0],))
        self.built = True

    def table_shapes(self):
        return [shape for m in self.memrecs for shape in m.table_shapes()]

    def stored_bytes(self, table_dtype):
        return sum(m.stored_bytes(table_dtype) for m in self.memrecs)

    def call(self, inputs):
        return tf.stack([layer(inputs[:, j]) for j, layer in enumerate(self.memrecs)], axis=1)

    def get_config(self):
        config = super().get_config()
        first = self.memrecs[0]
        config.update(num_token_rows=[m.num_token_rows for m in self.memrecs],
                      num_hashes=first.num_hashes,
                      num_weight_rows=[m.num_weight_rows for m in self.memrecs],
                      num_weight_hashes=first.num_weight_hashes, weight_mode=first.weight_mode,
                      num_head_rows=[m.num_head_rows for m in self.memrecs],
                      implementation=first.implementation,
                      embeddings_initializer=keras.initializers.serialize(self._initializer),
                      embedding_optimizer=optimizers.serialize(first.embedding_optimizer))
        return config
