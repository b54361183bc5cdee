"""MEM-REC written only with TensorFlow's built-in ops.

This path computes the same rows as the fused op, bit for bit (int64
arithmetic wraps in TensorFlow on CPU, GPU and XLA alike, which is what the
C++ kernels' uint64 arithmetic does), and the same outputs to float
tolerance. It serves XLA, machines without the compiled op library, and
SavedModels for a stock TensorFlow Serving.
"""
import tensorflow as tf

from memrec_tf.ops import table_gradients
from memrec_tf.ops import signature as sig_lib

def _shift_right_logical(x, bits):
    # tf.bitwise.right_shift is arithmetic on int64; mask the sign copies.
    return tf.bitwise.bitwise_and(tf.bitwise.right_shift(x, bits),
                                  (1 << (64 - bits)) - 1)


def _int64_constant(value):
    return tf.constant(sig_lib.as_int64(value), tf.int64)


def _mix64(z):
    # int64 products wrap in TensorFlow, as the kernels' uint64 ones do.
    return sig_lib.mix64(z, shift_right=_shift_right_logical, constant=_int64_constant,
                         wrap=lambda v: v)


def _keys(ids, signature):
    """IdKey of every position: the id mixed with its (seed, salt) constant."""
    if signature.num_salts > 1:
        salts = tf.constant(
            [sig_lib.as_int64(sig_lib.salt_key(signature.seed, s))
             for s in range(signature.num_salts)], tf.int64)
        positions = tf.range(tf.size(ids, out_type=tf.int64), dtype=tf.int64)
        salt = tf.gather(salts, positions % signature.num_salts)
    else:
        salt = tf.constant(sig_lib.as_int64(sig_lib.salt_key(signature.seed, 0)), tf.int64)
    return _mix64(tf.bitwise.bitwise_xor(ids, salt))


def _hash_rows(keys, stream, count, rows):
    """[N, count] rows of `count` hash functions of one stream (HashRow)."""
    columns = []
    for j in range(count):
        h = _mix64(keys + sig_lib.as_int64((j + 1) * stream))
        if rows < 1 << 32:
            # (h >> 32) * rows < 2^64: the wrapped int64 product has the bits
            # of the exact unsigned one.
            row = _shift_right_logical(_shift_right_logical(h, 32) * rows, 32)
        else:
            row = tf.math.floormod(_shift_right_logical(h, 1), rows)
        columns.append(row)
    return tf.stack(columns, axis=1)


def _radix_rows(index, radix):
    offsets, radices, strides = radix
    return tf.stack([o + tf.math.floormod(tf.math.floordiv(index, s), r)
                     for o, r, s in zip(offsets, radices, strides)], axis=1)


def hash_rows(ids, signature, num_token_rows, num_weight_rows):
    """Rows read for each id, as the MemRecHashRows op computes them.

    Args:
      ids: int64 tensor [N].
      signature: a `memrec_tf.ops.signature.Signature`.
      num_token_rows: m, rows of the token table.
      num_weight_rows: m_w, rows of the weight table.

    Returns:
      (token_rows int64 [N, k], weight_rows int64 [N, kw]).
    """
    ids = tf.convert_to_tensor(ids, tf.int64)
    keys = _keys(ids, signature)
    k, kw = signature.num_hashes, signature.num_weight_hashes
    token = _hash_rows(keys, sig_lib.TOKEN_STREAM, k, num_token_rows)
    if kw > 0:
        weight = _hash_rows(keys, sig_lib.WEIGHT_STREAM, kw, num_weight_rows)
    else:
        weight = tf.zeros([tf.size(ids), 0], tf.int64)
    if signature.vocab_size > 0:
        vocab, head = signature.vocab_size, signature.num_head
        in_vocab = tf.logical_and(ids >= 0, ids < vocab)
        safe = tf.where(in_vocab, ids, tf.zeros_like(ids))
        tail = _radix_rows(tf.maximum(safe - head, 0), signature.token_radix(num_token_rows))
        own = tf.tile(safe[:, None], [1, k])
        token_vocab = tf.where((safe < head)[:, None], own, tail)
        token = tf.where(in_vocab[:, None], token_vocab, token)
        if kw > 0:
            weight_vocab = _radix_rows(safe, signature.weight_radix(num_weight_rows))
            weight = tf.where(in_vocab[:, None], weight_vocab, weight)
    return token, weight


def in_xla_context():
    """True while tracing inside tf.function(jit_compile=True)."""
    # pylint: disable-next=g-direct-tensorflow-import,g-import-not-at-top
    from tensorflow.python.ops import control_flow_util

    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def gather_rows(table, rows, dense=False):
    """tf.gather(table, rows) whose gradient holds each row once, rows ascending.

    tf.gather's own gradient has one entry per gathered row, duplicates
    included, and optimizers with per-row state (Keras 3's Adam, Adagrad,
    RMSprop) apply duplicate entries differently from their sum. This
    gradient sums them first, as the fused op's does: into a dense tensor of
    the table's shape when `dense`, else into `tf.IndexedSlices`. Inside XLA
    (no dynamic shapes) it is tf.gather's own.
    """
    if in_xla_context():
        return tf.gather(table, rows)

    @tf.custom_gradient
    def gather(values):
        def grad(upstream):
            flat = tf.reshape(rows, [-1])
            per_row = tf.reshape(upstream, tf.stack([tf.size(flat), tf.shape(values)[1]]))
            if dense:
                return tf.math.unsorted_segment_sum(per_row, flat, tf.shape(values)[0])
            unique, position = tf.unique(flat, out_idx=tf.int64)
            summed = tf.math.unsorted_segment_sum(per_row, position, tf.size(unique))
            order = tf.argsort(unique)
            return tf.IndexedSlices(tf.gather(summed, order), tf.gather(unique, order),
                                    tf.shape(values, out_type=tf.int64))
        return tf.gather(values, rows), grad

    return gather(table)


def lookup(ids, row_splits, weights, token_table, weight_table, signature,
           combiner="sum", weight_mode="scalar"):
    """The MemRecLookup op written with built-in ops (same arguments).

    Gradients flow to both tables as the fused op's do: dense, or
    IndexedSlices with each row once, rows ascending, as
    `table_gradients.use_dense` chooses (`gather_rows`); per-id weights are
    treated as constants, as in the fused op.
    """
    dtype = token_table.dtype
    # half and bfloat16 accumulate in float32, as the fused kernels do.
    compute = tf.float64 if dtype == tf.float64 else tf.float32
    table = tf.cast(token_table, compute)
    wtable = tf.cast(weight_table, compute)
    if token_table.shape[0] is None or weight_table.shape[0] is None:
        raise ValueError("the core path needs tables with static row counts, got "
                         f"{token_table.shape} and {weight_table.shape}")
    token_rows, weight_rows = hash_rows(ids, signature, int(token_table.shape[0]),
                                        int(weight_table.shape[0]))
    dense = table_gradients.use_dense(token_table, weight_table)
    rows = gather_rows(table, token_rows, dense)  # [N, k, d]
    n = tf.size(ids)
    width = signature.num_hashes if weight_mode == "per_hash" else 1
    if signature.num_weight_hashes > 0:
        alpha = tf.reduce_sum(gather_rows(wtable, weight_rows, dense), axis=1)  # [N, width]
    else:
        alpha = tf.ones([n, width], compute)
    if weight_mode == "per_hash":
        values = tf.reduce_sum(alpha[:, :, None] * rows, axis=1)
    else:
        values = alpha * tf.reduce_sum(rows, axis=1)
    # An empty weights vector means "all ones", decided at run time so that a
    # weights tensor of unknown static length works too.
    if weights is None:
        w = tf.ones([n], compute)
    else:
        weights = tf.stop_gradient(tf.cast(weights, compute))
        w = tf.cond(tf.size(weights) > 0, lambda: weights, lambda: tf.ones([n], compute))
    values = values * w[:, None]
    if combiner == "none":
        return tf.cast(values, dtype)
    num_bags = tf.size(row_splits) - 1
    segments = tf.ragged.row_splits_to_segment_ids(row_splits)
    pooled = tf.math.unsorted_segment_sum(values, segments, num_bags)
    if combiner in ("mean", "sqrtn"):
        if combiner == "mean":
            denominator = tf.math.unsorted_segment_sum(w, segments, num_bags)
        else:
            denominator = tf.sqrt(tf.math.unsorted_segment_sum(w * w, segments, num_bags))
        pooled = pooled * tf.math.divide_no_nan(
            tf.ones_like(denominator), denominator)[:, None]
    return tf.cast(pooled, dtype)
