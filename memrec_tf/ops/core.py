"""MEM-REC written only with TensorFlow's built-in ops.

This path computes the same rows as the fused op, bit for bit (uint64
arithmetic wraps in TensorFlow on CPU, GPU and XLA alike, as the C++
kernels' does), and the same outputs to float tolerance. It serves XLA,
machines without the compiled op library, and SavedModels for a stock
TensorFlow Serving, so its speed is the serving speed most users get:

  * every hash of an id (k token and kw weight hashes) is mixed in one
    [k + kw, N] pass, a handful of element-wise ops in all;
  * each hash column is gathered as its own [N, d] block and the blocks are
    added, with the per-id factor (alpha times the id's weight) applied once
    per id: no [N, k, d] block and no reduction over its middle axis;
  * bags are pooled with a sorted segment sum (row_splits are sorted).

Token tables stored for serving (`memrec_tf.ops.quantize`: int8 with a
float32 scale per row, or bfloat16) are read row by row, as
`quantize.dequantize_rows` reads them, without dequantizing the table.
"""
import tensorflow as tf

from memrec_tf.ops import quantize, table_gradients
from memrec_tf.ops import signature as sig_lib

_HIGH_BITS = 32  # a row is (high 32 bits of h) * rows >> 32 when rows < 2^32


def _uint64(value):
    """uint64 constant of an unsigned int or a list of them, reduced to 64 bits."""
    # Built from int64 bits: XLA clamps uint64 vector constants at 2^63.
    if isinstance(value, (list, tuple)):
        bits = [sig_lib.as_int64(v) for v in value]
    else:
        bits = sig_lib.as_int64(value)
    return tf.bitcast(tf.constant(bits, tf.int64), tf.uint64)


def _shift_right(x, bits):
    return tf.bitwise.right_shift(x, _uint64(bits))


def _mix64(z):
    return sig_lib.mix64(z, shift_right=_shift_right, constant=_uint64, wrap=lambda v: v)


def _keys(ids, signature):
    """IdKey of every position (uint64 [N]): the id mixed with its salt constant."""
    ids = tf.bitcast(ids, tf.uint64)
    if signature.num_salts > 1:
        salts = _uint64([sig_lib.salt_key(signature.seed, s)
                         for s in range(signature.num_salts)])
        # Position p takes salt p % num_salts: the salts repeated to length N.
        n = tf.size(ids)
        salt = tf.tile(salts, [n // signature.num_salts + 1])[:n]
    else:
        salt = _uint64(sig_lib.salt_key(signature.seed, 0))
    return _mix64(tf.bitwise.bitwise_xor(ids, salt))


def _random_rows(keys, num_token_hashes, num_token_rows, num_weight_hashes, num_weight_rows):
    """[k + kw, N] int64 rows of the random hashes (HashRow), token hashes first."""
    offsets = ([(j + 1) * sig_lib.TOKEN_STREAM for j in range(num_token_hashes)]
               + [(j + 1) * sig_lib.WEIGHT_STREAM for j in range(num_weight_hashes)])
    sizes = [num_token_rows] * num_token_hashes + [num_weight_rows] * num_weight_hashes
    h = _mix64(keys[None, :] + _uint64(offsets)[:, None])
    if max(sizes) < 1 << _HIGH_BITS:
        # (h >> 32) * rows < 2^64: the product is exact.
        rows = _shift_right(_shift_right(h, _HIGH_BITS) * _uint64(sizes)[:, None], _HIGH_BITS)
        return tf.bitcast(rows, tf.int64)
    # A table of 2^32 rows or more: (h >> 1) % rows for its hashes.
    return tf.stack([_reduce_row(column, size) for column, size in zip(tf.unstack(h), sizes)])


def _reduce_row(h, rows):
    """The row in [0, rows) of the mixed hashes `h` (uint64), as int64."""
    if rows < 1 << _HIGH_BITS:
        return tf.bitcast(_shift_right(_shift_right(h, _HIGH_BITS) * _uint64(rows), _HIGH_BITS),
                          tf.int64)
    half = tf.bitcast(_shift_right(h, 1), tf.int64)  # < 2^63: the same int64 value
    return tf.math.floormod(half, tf.constant(rows, tf.int64))


def _radix_rows(index, radix, limit):
    """[parts, N] rows of the mixed-radix digits of `index` [N] in [0, limit).

    Digit i is offset_i + (index // stride_i) % radix_i. int64 division is
    slow, so a stride of 1 takes no division and a digit that cannot reach
    its radix (stride_i * radix_i >= limit) no remainder.
    """
    digits = []
    for offset, radix_i, stride in zip(*radix):
        digit = index if stride == 1 else tf.math.floordiv(index, stride)
        if stride * radix_i < limit:
            digit = tf.math.floormod(digit, radix_i)
        digits.append(digit + offset if offset else digit)
    return tf.stack(digits)


def _vocab_rows(index, signature, num_token_rows, num_weight_rows):
    """(token [k, N], weight [kw, N]) rows of vocabulary ids `index` [N]."""
    head = signature.num_head
    token = _radix_rows(index - head if head else index,
                        signature.token_radix(num_token_rows), signature.token_limit())
    if head:  # a head id owns its row; tail rows of head ids are discarded
        token = tf.where((index < head)[None, :], index[None, :], token)
    if signature.num_weight_hashes == 0:
        return token, tf.zeros([0, tf.size(index)], tf.int64)
    return token, _radix_rows(index, signature.weight_radix(num_weight_rows),
                              signature.vocab_size)


def _row_columns(ids, signature, num_token_rows, num_weight_rows):
    """(token rows [k, N], weight rows [kw, N]), int64, one hash per row."""
    ids = tf.convert_to_tensor(ids, tf.int64)
    k, kw = signature.num_hashes, signature.num_weight_hashes

    def random_rows():
        rows = _random_rows(_keys(ids, signature), k, num_token_rows, kw, num_weight_rows)
        return rows[:k], rows[k:]

    if signature.vocab_size == 0:
        return random_rows()
    # Negative ids read as uint64 are >= 2^63: one comparison tests both ends.
    in_vocab = tf.bitcast(ids, tf.uint64) < tf.bitcast(
        tf.constant(signature.vocab_size, tf.int64), tf.uint64)

    def mixed_rows():
        safe = tf.where(in_vocab, ids, tf.zeros_like(ids))
        vocab_rows = _vocab_rows(safe, signature, num_token_rows, num_weight_rows)
        return tuple(tf.where(in_vocab[None, :], v, r)
                     for v, r in zip(vocab_rows, random_rows()))

    if in_xla_context():
        return mixed_rows()
    # Served ids are usually all in the vocabulary: then no random hash is computed.
    return tf.cond(tf.reduce_all(in_vocab),
                   lambda: _vocab_rows(ids, signature, num_token_rows, num_weight_rows),
                   mixed_rows)


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
    token, weight = _row_columns(ids, signature, num_token_rows, num_weight_rows)
    return tf.transpose(token), tf.transpose(weight)


def in_xla_context():
    """True while tracing inside tf.function(jit_compile=True)."""
    # pylint: disable-next=g-direct-tensorflow-import,g-import-not-at-top
    from tensorflow.python.ops import control_flow_util

    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def _unique_row_gradient(values, flat_rows, per_row, dense=False):
    """IndexedSlices of `per_row` [R, d] summed per row of `flat_rows` [R], ascending;
    with `dense`, the same sums as a tensor shaped like `values`."""
    if dense:
        return tf.math.unsorted_segment_sum(per_row, flat_rows, tf.shape(values)[0])
    # Sorting first lets the (several times faster) sorted segment sum add
    # each row's contributions, and leaves the rows ascending.
    order = tf.argsort(flat_rows, stable=True)
    unique, position = tf.unique(tf.gather(flat_rows, order), out_idx=tf.int64)
    summed = tf.math.segment_sum(tf.gather(per_row, order), position)
    return tf.IndexedSlices(summed, unique, tf.shape(values, out_type=tf.int64))


def gather_rows(table, rows, dense=False):
    """tf.gather(table, rows) whose gradient holds each row once, rows ascending.

    tf.gather's own gradient has one entry per gathered row, duplicates
    included, and optimizers with per-row state (Keras 3's Adam, Adagrad,
    RMSprop) apply duplicate entries differently from their sum. This
    gradient sums them first, as the fused op's does. Inside XLA (no dynamic
    shapes) it is tf.gather's own.
    """
    if in_xla_context():
        return tf.gather(table, rows)

    @tf.custom_gradient
    def gather(values):
        def grad(upstream):
            flat = tf.reshape(rows, [-1])
            per_row = tf.reshape(upstream, tf.stack([tf.size(flat), tf.shape(values)[1]]))
            return _unique_row_gradient(values, flat, per_row, dense)
        return tf.gather(values, rows), grad

    return gather(table)


def gather_columns(table, columns, dense=False):
    """[tf.gather(table, c) for c in columns], one gradient with each row once.

    The blocks of all columns share one gradient to `table`: IndexedSlices
    with each row once, rows ascending, as `gather_rows`'s (separate
    tf.gather calls would give one entry per read row, duplicates included).
    Inside XLA they are plain tf.gather calls.

    Args:
      table: [rows, d] tensor.
      columns: a list of int64 [N] row tensors.
    Returns:
      a list of [N, d] tensors, one per column.
    """
    if in_xla_context():
        return [tf.gather(table, c) for c in columns]

    @tf.custom_gradient
    def gather(values):
        blocks = [tf.gather(values, c) for c in columns]

        def grad(*upstream):
            per_row = tf.concat([tf.zeros_like(b) if u is None else tf.convert_to_tensor(u)
                                 for u, b in zip(upstream, blocks)], axis=0)
            return _unique_row_gradient(values, tf.concat(columns, axis=0), per_row, dense)
        return blocks, grad

    return gather(table)


def _read_only(table):
    """`table`, whose gradient is refused with an error naming the fix."""
    @tf.custom_gradient
    def read(values):
        def grad(_):
            raise ValueError(
                f"no gradient flows to a token table stored as {table.dtype.name} for "
                "serving (memrec_tf.ops.quantize); train the float32 table and store "
                "it for serving afterwards")
        return tf.identity(values), grad
    return read(table)


def _serving_format(token_table, weight_table, token_scales):
    """The stored format of a serving token table, or None for a training one."""
    dtype = token_table.dtype
    if dtype == tf.int8:
        if token_scales is None:
            raise ValueError("an int8 token table needs token_scales: one float32 scale per "
                             "row (memrec_tf.ops.quantize.quantize_rows)")
    elif token_scales is not None:
        raise ValueError(f"token_scales go with an int8 token table, got a {dtype.name} "
                         "token table")
    elif not (dtype == tf.bfloat16 and weight_table.dtype == tf.float32):
        return None
    if weight_table.dtype != tf.float32:
        raise ValueError(f"a {dtype.name} token table is read with a float32 weight table, "
                         f"got {weight_table.dtype.name}")
    return dtype.name


def _id_weights(weights, n, compute):
    """Per-id weights [N] of `compute` dtype (constants), or None for all ones."""
    if weights is None:
        return None
    weights = tf.stop_gradient(tf.cast(weights, compute))
    length = weights.shape[0] if weights.shape.rank == 1 else None
    if length == 0:
        return None
    if length is not None:
        return weights
    # An empty weights vector means "all ones", decided at run time so that a
    # weights tensor of unknown static length works too.
    return tf.cond(tf.size(weights) > 0, lambda: weights, lambda: tf.ones([n], compute))


def _times(a, b):
    """a * b where None stands for ones."""
    if a is None:
        return b
    return a if b is None else a * b


def _segment_sum(values, segments, num_segments):
    """Sum of `values` rows per sorted segment id, `num_segments` rows."""
    if in_xla_context():
        return tf.math.unsorted_segment_sum(values, segments, num_segments)
    # The sorted kernel is several times faster than the unsorted one; its
    # output ends at the last id present, so empty trailing bags are padded.
    summed = tf.math.segment_sum(values, segments)
    missing = tf.cast(num_segments, tf.int32) - tf.shape(summed)[0]
    paddings = [[0, missing]] + [[0, 0]] * (values.shape.rank - 1)
    return tf.pad(summed, paddings)


def lookup(ids, row_splits, weights, token_table, weight_table, signature,
           combiner="sum", weight_mode="scalar", token_scales=None):
    """The MemRecLookup op written with built-in ops (same arguments).

    Gradients flow to both tables as the fused op's do: dense, or
    IndexedSlices with each row once, rows ascending, as
    `table_gradients.use_dense` chooses (`gather_columns`); per-id weights
    are treated as constants, as in the fused op.

    A token table stored for serving is read as `quantize.dequantize_rows`
    reads it, accumulated in float32, and the output is float32:

      * int8 with `token_scales` ([m] float32, one scale per row), or
      * bfloat16 with a float32 weight table.

    Only the rows read are converted. Such tables are for serving: a
    gradient to a bfloat16 one is refused with an error (int8 values are
    not differentiable at all); the weight table still takes its gradient.

    Args:
      token_scales: [m] float32 scales of an int8 token table; None otherwise.
    """
    token_table = tf.convert_to_tensor(token_table)
    weight_table = tf.convert_to_tensor(weight_table)
    if token_table.shape[0] is None or weight_table.shape[0] is None:
        raise ValueError("the core path needs tables with static row counts, got "
                         f"{token_table.shape} and {weight_table.shape}")
    stored = _serving_format(token_table, weight_table, token_scales)
    if stored:
        dtype = compute = tf.float32
        table = token_table if stored == "int8" else _read_only(token_table)
    else:
        dtype = token_table.dtype
        # half and bfloat16 accumulate in float32, as the fused kernels do.
        compute = tf.float64 if dtype == tf.float64 else tf.float32
        table = tf.cast(token_table, compute)
    token_rows, weight_rows = _row_columns(ids, signature, int(token_table.shape[0]),
                                           int(weight_table.shape[0]))
    k, kw = signature.num_hashes, signature.num_weight_hashes
    n = tf.size(ids)
    dense = table_gradients.use_dense(token_table, weight_table)
    w = _id_weights(weights, n, compute)

    # The factor of each hash's row, per id: w * alpha_i (alpha_0 in scalar mode).
    per_hash = weight_mode == "per_hash"
    if kw > 0:
        wtable = tf.cast(weight_table, compute)
        alpha = tf.add_n(gather_columns(wtable, tf.unstack(weight_rows, kw),
                                        dense))  # [N, width]
        if per_hash:
            factors = [_times(w, a) for a in tf.unstack(alpha, k, axis=1)]
        else:
            factors = [_times(w, alpha[:, 0])] * k
    else:
        factors = [w] * k

    columns = tf.unstack(token_rows, k)
    if stored:
        blocks = [tf.cast(tf.gather(table, c), compute) for c in columns]
        if stored == "int8":
            scales = tf.cast(token_scales, tf.float32)
            factors = [_times(f, tf.gather(scales, c)) for f, c in zip(factors, columns)]
    else:
        blocks = gather_columns(table, columns, dense)
    # Every row is scaled by its factor before it is added, as the fused op
    # accumulates: scaling the sum instead would overflow to inf where the
    # fused op's sum of scaled rows does not.
    if factors[0] is None:
        values = tf.add_n(blocks)
    else:
        values = tf.add_n([b * f[:, None] for b, f in zip(blocks, factors)])

    if combiner == "none":
        return tf.cast(values, dtype)
    num_bags = tf.size(row_splits) - 1
    segments = tf.ragged.row_splits_to_segment_ids(row_splits)
    pooled = _segment_sum(values, segments, num_bags)
    if combiner in ("mean", "sqrtn"):
        if w is None:
            counts = tf.cast(row_splits[1:] - row_splits[:-1], compute)
            denominator = counts if combiner == "mean" else tf.sqrt(counts)
        elif combiner == "mean":
            denominator = _segment_sum(w, segments, num_bags)
        else:
            denominator = tf.sqrt(_segment_sum(w * w, segments, num_bags))
        pooled = pooled * tf.math.divide_no_nan(
            tf.ones_like(denominator), denominator)[:, None]
    return tf.cast(pooled, dtype)
