"""The MemRecEmbedding Keras layer.

The layer is written against `tf.keras`, resolved when this module is first
imported: Keras 3 by default, tf-keras when TF_USE_LEGACY_KERAS=1 (which
TensorFlow Recommenders needs). Set the variable before importing memrec_tf.
"""
import dataclasses
import warnings

import tensorflow as tf

from memrec_tf import ops, optimizers
from memrec_tf.ops import core, updates
from memrec_tf.layers.ids import ids_to_int64, same_structure
from memrec_tf.ops.signature import MAX_HASHES, Signature
from memrec_tf.sizing import tables

keras = tf.keras

IMPLEMENTATIONS = ("auto", "fused", "core")
COMBINERS = (None, "sum", "mean", "sqrtn")
WEIGHT_MODES = ("scalar", "per_hash")

_fallback_warned = False
# Keras 3 names variable aggregations; tf-keras takes TensorFlow's enum.
_ONLY_FIRST_REPLICA = ("only_first_replica" if hasattr(keras, "Variable")
                       else tf.VariableAggregation.ONLY_FIRST_REPLICA)


def _tf_variable(weight):
    """The tf.Variable of a layer weight (Keras 3 wraps one; tf-keras's is one)."""
    return weight if isinstance(weight, tf.Variable) else weight.value


def _warn_fallback_once(reason):
    global _fallback_warned
    if not _fallback_warned:
        _fallback_warned = True
        warnings.warn(
            "memrec_tf: the fused op is unavailable, MemRecEmbedding uses the "
            f"built-in-ops path (same results, slower). Reason: {reason}",
            RuntimeWarning, stacklevel=3)


@keras.utils.register_keras_serializable(package="memrec_tf")
class MemRecEmbedding(keras.layers.Layer):
    """An embedding layer backed by a MEM-REC token table and weight table.

    A value x is hashed by `num_hashes` functions to rows of the token table
    M [num_token_rows, output_dim] and by `num_weight_hashes` functions to rows
    of the weight table W. With weight_mode="scalar" (the paper's form),
    z(x) = (sum_j W[g_j(x)]) * sum_i M[h_i(x)]; with "per_hash",
    z(x) = sum_i (sum_j W[g_j(x), i]) * M[h_i(x)].

    Args:
      output_dim: d, the embedding width.
      num_token_rows: m, rows of the token table.
      num_hashes: k, token rows per value (1..16).
      num_weight_rows: m_w, rows of the weight table (default: num_token_rows).
      num_weight_hashes: kw, weight rows per value (0..16; 0 fixes alpha = 1).
      weight_mode: "scalar" (W is [m_w, 1]) or "per_hash" (W is [m_w, k]).
      combiner: None (one embedding per id), or "sum", "mean", "sqrtn" to
        pool the last axis of a dense input, or the bags of a ragged or sparse
        input.
      seed: seeds every hash; layers with different seeds hash independently.
      implementation: "auto" (the fused op when its library loads, else the
        built-in-ops path, with a warning once; always the built-in-ops path
        inside XLA), "fused" or "core".
      embeddings_initializer: initializer of the token table.
      weights_initializer: initializer of the weight table (default: the
        constant 1 / num_weight_hashes, so that alpha starts at 1).
      embeddings_regularizer: optional regularizer of the token table.
      salt_columns: if True, a dense input's last axis indexes features: the
        id in column j is hashed with salt j, so one pair of tables serves
        several features without equal raw ids colliding across them. Needs
        combiner=None and a static last dimension.
      vocabulary_size: V > 0 declares that ids in [0, V) are dense indices
        (e.g. `keras.layers.IntegerLookup` or `StringLookup` indices, or
        `memrec_tf.data.Vocabulary`): they take collision-free mixed-
        radix signatures; other ids fall back to the random hashes.
      num_head_rows: with a vocabulary, ids below this (the most frequent
        values, when indices are ordered by frequency) own a token row each.
      embedding_optimizer: None (the token table is a trainable weight, for
        the model's optimizer), or a `memrec_tf.optimizers` optimizer
        (`SGD(...)`, `Adagrad(...)`, `Adam(...)` or their names): the token
        table is updated in the layer's own backward pass, on CPU inside the
        fused gradient kernel; its state is kept in non-trainable weights
        (see `memrec_tf.optimizers`). The weight table stays trainable.
      **kwargs: passed to `keras.layers.Layer`.

    Input: int32, int64 or string ids; dense [B] -> [B, d]; dense [..., L] ->
    [..., L, d] without a combiner, [..., d] with one; tf.RaggedTensor bags
    with a combiner -> [B, d] (without: ragged [B, None, d]);
    tf.SparseTensor [B, L] with a combiner -> [B, d]. `weights`, optional,
    has the structure of the ids.

    Raises:
      ValueError: a constructor argument out of range (the message quotes it),
        or an input of an unsupported dtype or structure.
    """

    def __init__(self, output_dim, num_token_rows, num_hashes=2,
                 num_weight_rows=None, num_weight_hashes=1, weight_mode="scalar",
                 combiner=None, seed=0, implementation="auto",
                 embeddings_initializer="uniform", weights_initializer=None,
                 embeddings_regularizer=None, salt_columns=False,
                 vocabulary_size=0, num_head_rows=0, embedding_optimizer=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(output_dim, int) or output_dim < 1:
            raise ValueError(f"output_dim must be a positive int, got {output_dim!r}")
        if not isinstance(num_token_rows, int) or num_token_rows < 1:
            raise ValueError(f"num_token_rows must be a positive int, got {num_token_rows!r}")
        if not isinstance(num_hashes, int) or not 1 <= num_hashes <= MAX_HASHES:
            raise ValueError(f"num_hashes must be an int in [1, {MAX_HASHES}], got {num_hashes!r}")
        if num_weight_rows is None:
            num_weight_rows = num_token_rows
        if not isinstance(num_weight_rows, int) or num_weight_rows < 1:
            raise ValueError(f"num_weight_rows must be a positive int, got {num_weight_rows!r}")
        if not isinstance(num_weight_hashes, int) or not 0 <= num_weight_hashes <= MAX_HASHES:
            raise ValueError(
                f"num_weight_hashes must be an int in [0, {MAX_HASHES}], got {num_weight_hashes!r}")
        if weight_mode not in WEIGHT_MODES:
            raise ValueError(f"weight_mode must be one of {WEIGHT_MODES}, got {weight_mode!r}")
        if combiner not in COMBINERS:
            raise ValueError(f"combiner must be one of {COMBINERS}, got {combiner!r}")
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
        if not isinstance(seed, int) or not -2**63 <= seed < 2**63:
            raise ValueError(f"seed must be an int in the int64 range, got {seed!r}")
        if salt_columns and combiner is not None:
            raise ValueError("salt_columns=True needs combiner=None (one feature per column), "
                             f"got combiner={combiner!r}")
        if not isinstance(vocabulary_size, int) or vocabulary_size < 0:
            raise ValueError(f"vocabulary_size must be an int >= 0, got {vocabulary_size!r}")
        if not isinstance(num_head_rows, int) or not 0 <= num_head_rows <= vocabulary_size:
            raise ValueError(
                f"num_head_rows must be an int in [0, vocabulary_size={vocabulary_size}], "
                f"got {num_head_rows!r}")
        self.embedding_optimizer = optimizers.get(embedding_optimizer)
        if self.embedding_optimizer is not None and embeddings_regularizer is not None:
            raise ValueError(
                "embeddings_regularizer needs the token table to be trained by the model's "
                "optimizer; with an embedding_optimizer its loss would not reach the table. "
                "Pass one of the two")
        self.output_dim = output_dim
        self.num_token_rows = num_token_rows
        self.num_hashes = num_hashes
        self.num_weight_rows = num_weight_rows
        self.num_weight_hashes = num_weight_hashes
        self.weight_mode = weight_mode
        self.combiner = combiner
        self.seed = seed
        self.implementation = implementation
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self.weights_initializer = (
            keras.initializers.get(weights_initializer) if weights_initializer is not None
            else keras.initializers.Constant(1.0 / max(1, num_weight_hashes)))
        self._weights_initializer_given = weights_initializer is not None
        self.embeddings_regularizer = keras.regularizers.get(embeddings_regularizer)
        self.salt_columns = bool(salt_columns)
        self.vocabulary_size = vocabulary_size
        self.num_head_rows = num_head_rows
        self._num_salts = 0
        # Validates the row counts against the signature settings now, not at
        # the first call.
        self._signature().validate(num_token_rows, num_weight_rows)
        if implementation == "fused" or self.embedding_optimizer is not None:
            # Keras must not choose XLA for a model that requires the fused op
            # or updates a table inside its gradient.
            self.supports_jit = False

    # ------------------------------------------------------------------ build

    def build(self, input_shape=None):
        if self.salt_columns:
            last = None if input_shape is None else tuple(input_shape)[-1]
            if last is None:
                raise ValueError("salt_columns=True needs a static last dimension "
                                 f"(the number of features), got input shape {input_shape}")
            self._num_salts = int(last)
        token_shape, weight_shape = self.table_shapes()
        optimizer = self.embedding_optimizer
        if optimizer is None:
            state = dict(trainable=True)
        else:
            if self.variable_dtype != self.compute_dtype:
                raise ValueError(
                    "an embedding_optimizer needs one dtype for variables and computation, "
                    f"got the dtype policy {self.dtype_policy.name!r}: loss scaling would "
                    "scale the token table's update. Use float32 for this layer "
                    "(dtype='float32')")
            # Every replica applies the same summed update: the first's value stands.
            state = dict(trainable=False, aggregation=_ONLY_FIRST_REPLICA)
        self.token_table = self.add_weight(
            name="token_table", shape=token_shape,
            initializer=self.embeddings_initializer,
            regularizer=self.embeddings_regularizer, **state)
        self.weight_table = self.add_weight(
            name="weight_table", shape=weight_shape,
            initializer=self.weights_initializer, trainable=True)
        if optimizer is not None:
            # An attribute each, not a list: tf.train.Checkpoint tracks these.
            for slot in optimizer.slot_names:
                setattr(self, f"token_table_{slot}", self.add_weight(
                    name=f"token_table_{slot}", shape=token_shape,
                    initializer=keras.initializers.Constant(optimizer.slot_initial_value(slot)),
                    **state))
            self.optimizer_iterations = self.add_weight(
                name="embedding_optimizer_iterations", shape=(), dtype="int64",
                initializer="zeros", **state)
        self.built = True

    @property
    def optimizer_slots(self):
        """The embedding optimizer's slot weights, in its `slot_names` order."""
        names = () if self.embedding_optimizer is None else self.embedding_optimizer.slot_names
        return [getattr(self, f"token_table_{slot}") for slot in names]

    def table_shapes(self):
        """[(rows, width)] of the token table and the weight table."""
        return tables.memrec_table_shapes(self.num_token_rows, self.num_weight_rows,
                                          self.output_dim, self.num_hashes, self.weight_mode)

    def stored_bytes(self, table_dtype="float32"):
        """Bytes of its tables served with the token table stored as `table_dtype`
        (the weight table stays float32; see `memrec_tf.layers.stored`)."""
        return tables.memrec_bytes(self.num_token_rows, self.num_weight_rows, self.output_dim,
                                   self.num_hashes, self.weight_mode, table_dtype)

    def _signature(self):
        return Signature(num_hashes=self.num_hashes,
                         num_weight_hashes=self.num_weight_hashes, seed=self.seed,
                         num_salts=self._num_salts, vocab_size=self.vocabulary_size,
                         num_head=self.num_head_rows)

    # ------------------------------------------------------------------- call

    @tf.autograph.experimental.do_not_convert
    def _uses_fused(self):
        if self.implementation == "core":
            return False
        if self.implementation == "fused":
            ops.load_library()  # raises OpLibraryError with the fix
            return True
        if core.in_xla_context():
            return False
        available, reason = ops.is_available()
        if not available:
            _warn_fallback_once(reason)
        return available

    def _lookup(self, ids, row_splits, weights, combiner):
        """Flat ids [N] (and splits for bags) -> [rows, d] in compute dtype."""
        stored = getattr(self, "_stored_token_table", None)
        scales = None
        if stored is not None:  # see `memrec_tf.layers.stored`: rows as served
            table, scales = stored
            weight_table = tf.convert_to_tensor(self.weight_table)
            table_dtype = weight_table.dtype
        else:
            table = tf.convert_to_tensor(self.token_table)
            weight_table = tf.cast(tf.convert_to_tensor(self.weight_table), table.dtype)
            table_dtype = table.dtype
        if weights is None:
            weights = tf.zeros([0], table_dtype)
        else:
            weights = tf.cast(weights, table_dtype)
        if row_splits is None:
            row_splits = tf.zeros([0], tf.int64)
        signature = self._signature()
        extra = {} if stored is None else {"token_scales": scales}
        if self.embedding_optimizer is not None and stored is None:
            out = updates.lookup_and_update(
                ids, row_splits, weights, _tf_variable(self.token_table), weight_table,
                signature, self.embedding_optimizer,
                [_tf_variable(slot) for slot in self.optimizer_slots],
                _tf_variable(self.optimizer_iterations), combiner, self.weight_mode,
                fused_op=self._uses_fused())
            return tf.cast(out, self.compute_dtype)
        lookup = ops.lookup if self._uses_fused() else core.lookup
        out = lookup(ids, row_splits, weights, table, weight_table, signature,
                     combiner=combiner, weight_mode=self.weight_mode, **extra)
        return tf.cast(out, self.compute_dtype)

    def call(self, inputs, weights=None):
        if isinstance(inputs, tf.SparseTensor):
            return self._call_sparse(inputs, weights)
        if isinstance(inputs, tf.RaggedTensor):
            return self._call_ragged(inputs, weights)
        ids = ids_to_int64(tf.convert_to_tensor(inputs))
        if ids.shape.rank == 0:
            raise ValueError("MemRecEmbedding needs ids of rank >= 1, got a scalar")
        if self.salt_columns and (ids.shape.rank < 2 or ids.shape[-1] != self._num_salts):
            raise ValueError(f"this salt_columns=True layer was built for ids [..., "
                             f"{self._num_salts}] (one column per feature), got shape "
                             f"{ids.shape}")
        if weights is not None:
            weights = same_structure(tf.convert_to_tensor(weights), ids)
        flat = tf.reshape(ids, [-1])
        flat_weights = None if weights is None else tf.reshape(weights, [-1])
        if self.combiner is None:
            out = self._lookup(flat, None, flat_weights, "none")
            return tf.reshape(out, tf.concat([tf.shape(ids), [self.output_dim]], 0))
        if ids.shape.rank == 1:  # each id is a bag of one
            ids = ids[:, None]
        bag = tf.shape(ids, out_type=tf.int64)[-1]
        num_bags = tf.reduce_prod(tf.shape(ids, out_type=tf.int64)[:-1])
        splits = tf.range(num_bags + 1, dtype=tf.int64) * bag
        out = self._lookup(flat, splits, flat_weights, self.combiner)
        return tf.reshape(out, tf.concat([tf.shape(ids)[:-1], [self.output_dim]], 0))

    def _call_ragged(self, inputs, weights):
        if self.salt_columns:
            raise ValueError("salt_columns=True needs a dense input, got a tf.RaggedTensor")
        if weights is not None and not isinstance(weights, tf.RaggedTensor):
            raise ValueError("weights must be a tf.RaggedTensor like the ids, got "
                             f"{type(weights).__name__}")
        if weights is not None:
            checks = [tf.debugging.assert_equal(
                a, b, message="weights must have the ragged row lengths of the ids")
                for a, b in zip(weights.nested_row_splits, inputs.nested_row_splits)]
            with tf.control_dependencies(checks):
                weights = tf.identity(weights)
        if self.combiner is None:
            values = ids_to_int64(inputs.flat_values)
            w = None if weights is None else weights.flat_values
            return inputs.with_flat_values(self._lookup(values, None, w, "none"))
        return self._pool_ragged(inputs, weights)

    def _pool_ragged(self, ragged, weights):
        # Pools the innermost ragged dimension; outer ragged dimensions stay.
        if isinstance(ragged.values, tf.RaggedTensor):
            inner_w = None if weights is None else weights.values
            return ragged.with_values(self._pool_ragged(ragged.values, inner_w))
        w = None if weights is None else weights.values
        return self._lookup(ids_to_int64(ragged.values), ragged.row_splits, w, self.combiner)

    def _call_sparse(self, inputs, weights):
        if self.combiner is None:
            raise ValueError("a tf.SparseTensor input needs a combiner ('sum', 'mean' or "
                             "'sqrtn'); got combiner=None")
        if inputs.shape.rank != 2:
            raise ValueError(f"a tf.SparseTensor input must be [B, L], got rank {inputs.shape.rank}")
        if weights is not None and not isinstance(weights, tf.SparseTensor):
            raise ValueError("weights must be a tf.SparseTensor like the ids, got "
                             f"{type(weights).__name__}")
        ids = tf.sparse.reorder(inputs)
        # Bag b holds the entries of row b, wherever their columns are.
        num_bags = ids.dense_shape[0]
        counts = tf.math.bincount(ids.indices[:, 0], minlength=num_bags, maxlength=num_bags,
                                  dtype=tf.int64)
        splits = tf.concat([tf.zeros([1], tf.int64), tf.cumsum(counts)], 0)
        w = None if weights is None else tf.sparse.reorder(weights).values
        return self._lookup(ids_to_int64(ids.values), splits, w, self.combiner)

    # --------------------------------------------------------------- helpers

    def hash_indices(self, ids):
        """The rows each id reads, bit-identical to what the fused op reads.

        Args:
          ids: int32, int64 or string ids [N] (with salt_columns, any dense
            shape whose last axis is the features; it is flattened).

        Returns:
          (token rows int64 [N, num_hashes], weight rows int64 [N, num_weight_hashes]).
        """
        ids = ids_to_int64(tf.convert_to_tensor(ids))
        signature = self._signature()
        if self.salt_columns and not self.built:
            # The salts come from the feature axis, which build() records.
            signature = dataclasses.replace(signature, num_salts=int(ids.shape[-1]))
        return core.hash_rows(tf.reshape(ids, [-1]), signature,
                              self.num_token_rows, self.num_weight_rows)

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        if self.combiner is None:
            return input_shape + (self.output_dim,)
        if len(input_shape) == 1:
            return input_shape + (self.output_dim,)
        return input_shape[:-1] + (self.output_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            output_dim=self.output_dim, num_token_rows=self.num_token_rows,
            num_hashes=self.num_hashes, num_weight_rows=self.num_weight_rows,
            num_weight_hashes=self.num_weight_hashes, weight_mode=self.weight_mode,
            combiner=self.combiner, seed=self.seed, implementation=self.implementation,
            embeddings_initializer=keras.initializers.serialize(self.embeddings_initializer),
            weights_initializer=(keras.initializers.serialize(self.weights_initializer)
                                 if self._weights_initializer_given else None),
            embeddings_regularizer=(keras.regularizers.serialize(self.embeddings_regularizer)
                                    if self.embeddings_regularizer is not None else None),
            salt_columns=self.salt_columns, vocabulary_size=self.vocabulary_size,
            num_head_rows=self.num_head_rows,
            embedding_optimizer=optimizers.serialize(self.embedding_optimizer))
        return config
