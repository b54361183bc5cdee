"""The fused lookup on token tables stored for serving (MemRecLookupQuantized).

An int8 table (with a float32 scale per row) or a bfloat16 table beside a
float32 weight table reads its rows as float(q) * scale or float(q) and sums
in float32 exactly as the float32 op does, so its output must equal, bit for
bit, the float32 fused lookup on `quantize.round_trip` of the table: the CPU
kernels are compiled without FMA contraction, and on the GPU both kernels
contract the same multiply-add. Any difference in the order or rounding of
a sum shows up here.
"""
import numpy as np
import pytest
import tensorflow as tf

import reference
from memrec_tf import ops
from memrec_tf.ops import fused, quantize
from memrec_tf.ops.signature import Signature

TABLE_DTYPES = ["int8", "bfloat16"]
COMBINERS = ["none", "sum", "mean", "sqrtn"]
K, D, M, M_W = 3, 12, 29, 7
VOCAB, HEAD = 30, 4
# Bags with empty ones at the start, in the middle and at the end.
SPLITS = [0, 0, 3, 4, 4, 9, 12, 12]
N = SPLITS[-1]


def _signature(kind, kw):
    if kind == "vocab":
        return Signature(num_hashes=K, num_weight_hashes=kw, seed=5, vocab_size=VOCAB)
    if kind == "head":
        return Signature(num_hashes=K, num_weight_hashes=kw, seed=5, vocab_size=VOCAB,
                         num_head=HEAD)
    if kind == "salted":
        return Signature(num_hashes=K, num_weight_hashes=kw, seed=9, num_salts=4)
    return Signature(num_hashes=K, num_weight_hashes=kw, seed=5)


def _case(rng, combiner, weight_mode, weighted, kw, kind, splits=SPLITS):
    n = splits[-1] if combiner != "none" else N
    ids = np.where(rng.random(n) < 0.6, rng.integers(0, VOCAB, n),
                   reference.random_ids(rng, n)).astype(np.int64)
    weights = rng.uniform(-1.0, 2.0, n) if weighted else np.zeros([0])
    if weighted and combiner == "mean" and splits[2] - splits[1] >= 2:
        # A bag whose weights cancel pools to zeros.
        weights[splits[1]:splits[2]] = 0.0
        weights[splits[1]], weights[splits[1] + 1] = 0.5, -0.5
    table = rng.normal(0.0, 0.5, [M, D]).astype(np.float32)
    table[2] = 0.0  # a row of zeros: int8 scale 0
    width = K if weight_mode == "per_hash" else 1
    return dict(
        ids=tf.constant(ids, tf.int64),
        splits=tf.constant([] if combiner == "none" else splits, tf.int64),
        weights=tf.constant(weights, tf.float32),
        table=table,
        wtable=tf.constant(rng.uniform(0.2, 1.5, [M_W, width]), tf.float32),
        sig=_signature(kind, kw), combiner=combiner, weight_mode=weight_mode)


def _lookup(c, table, token_scales=None):
    return ops.lookup(c["ids"], c["splits"], c["weights"], table, c["wtable"], c["sig"],
                      combiner=c["combiner"], weight_mode=c["weight_mode"],
                      token_scales=token_scales)


def _assert_same_bits(got, want):
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("kind", ["hashed", "salted", "vocab", "head"])
@pytest.mark.parametrize("kw", [0, 2])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("weight_mode", ["scalar", "per_hash"])
@pytest.mark.parametrize("combiner", COMBINERS)
@pytest.mark.parametrize("table_dtype", TABLE_DTYPES)
def test_stored_table_matches_float32_lookup_on_its_round_trip(
        rng, device, table_dtype, combiner, weight_mode, weighted, kw, kind):
    c = _case(rng, combiner, weight_mode, weighted, kw, kind)
    values, scales = quantize.quantize_rows(c["table"], table_dtype)
    with tf.device(device):
        got = _lookup(c, values, scales)
        want = _lookup(c, quantize.round_trip(c["table"], table_dtype))
    rows = N if combiner == "none" else len(SPLITS) - 1
    assert got.shape == (rows, D)
    _assert_same_bits(got.numpy(), want.numpy())
    if combiner != "none":  # the empty bags pool to zeros
        np.testing.assert_array_equal(got.numpy()[[0, 3, 6]], 0.0)


@pytest.mark.parametrize("table_dtype", TABLE_DTYPES)
def test_stored_table_matches_the_numpy_reference(rng, table_dtype):
    """The float32 path is itself checked against the float64 formula."""
    c = _case(rng, "sqrtn", "per_hash", True, 2, "head")
    values, scales = quantize.quantize_rows(c["table"], table_dtype)
    token_rows, weight_rows = ops.hash_rows(c["ids"], c["sig"], M, M_W)
    want = reference.lookup(c["splits"].numpy(), c["weights"].numpy(),
                            quantize.round_trip_numpy(c["table"], table_dtype),
                            c["wtable"].numpy(), token_rows.numpy(), weight_rows.numpy(),
                            combiner="sqrtn", weight_mode="per_hash")
    np.testing.assert_allclose(_lookup(c, values, scales).numpy(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("table_dtype", TABLE_DTYPES)
@pytest.mark.parametrize("combiner", COMBINERS)
def test_no_ids(rng, device, table_dtype, combiner):
    splits = [0, 0, 0] if combiner != "none" else []
    c = _case(rng, combiner, "scalar", False, 1, "hashed", splits=[0, 0, 0])
    c.update(ids=tf.zeros([0], tf.int64), splits=tf.constant(splits, tf.int64),
             weights=tf.zeros([0], tf.float32))
    values, scales = quantize.quantize_rows(c["table"], table_dtype)
    with tf.device(device):
        out = _lookup(c, values, scales)
    assert out.dtype == tf.float32
    assert out.shape == ((0, D) if combiner == "none" else (2, D))
    np.testing.assert_array_equal(out.numpy(), 0.0)


def test_works_inside_tf_function_and_on_variables(rng):
    c = _case(rng, "mean", "scalar", True, 1, "vocab")
    values, scales = quantize.quantize_rows(c["table"], "int8")
    values = tf.Variable(values, trainable=False)
    scales = tf.Variable(scales, trainable=False)
    out = tf.function(lambda: _lookup(c, values, scales))()
    _assert_same_bits(out.numpy(), _lookup(c, quantize.round_trip(c["table"], "int8")).numpy())


def test_bfloat16_throughout_still_runs_the_bfloat16_op(rng):
    """All-bfloat16 inputs keep MemRecLookup<bfloat16>, with a bfloat16 output."""
    c = _case(rng, "sum", "scalar", True, 1, "hashed")
    out = ops.lookup(c["ids"], c["splits"], tf.cast(c["weights"], tf.bfloat16),
                     tf.cast(c["table"], tf.bfloat16), tf.cast(c["wtable"], tf.bfloat16),
                     c["sig"])
    assert out.dtype == tf.bfloat16
    mixed = _lookup(c, tf.cast(c["table"], tf.bfloat16))
    assert mixed.dtype == tf.float32
    np.testing.assert_allclose(tf.cast(out, tf.float32).numpy(), mixed.numpy(), rtol=2e-2,
                               atol=2e-2)


# ------------------------------------------------------------------ errors

def _raw(c, table, scales, **attrs):
    return ops.load_library().mem_rec_lookup_quantized(
        c["ids"], c["splits"], c["weights"], table, scales, c["wtable"],
        combiner=c["combiner"], weight_mode=c["weight_mode"], **c["sig"].op_attrs(), **attrs)


@pytest.mark.parametrize("bad_scales", [[M - 1], [M + 1], [0], [M, 1]])
def test_int8_scales_of_the_wrong_shape_are_refused(rng, bad_scales):
    c = _case(rng, "sum", "scalar", False, 1, "hashed")
    values, _ = quantize.quantize_rows(c["table"], "int8")
    scales = tf.ones(bad_scales, tf.float32)
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError),
                       match=r"token_scales|rank"):
        _lookup(c, values, scales)
    if len(bad_scales) == 1:  # a vector: the kernel names the shape it needs
        with pytest.raises(tf.errors.InvalidArgumentError,
                           match=rf"one float32 scale per row of the int8 token_table: "
                                 rf"shape \[{M}\], got shape \[{bad_scales[0]}\]"):
            _lookup(c, values, scales)


def test_bfloat16_table_with_scales_is_refused(rng):
    c = _case(rng, "sum", "scalar", False, 1, "hashed")
    table = tf.cast(c["table"], tf.bfloat16)
    with pytest.raises(ValueError, match="bfloat16 token_table has no row scales"):
        _lookup(c, table, tf.ones([M], tf.float32))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"token_scales must be empty \(shape \[0\]\) for a bfloat16"):
        _raw(c, table, tf.ones([M], tf.float32))


def test_wrong_dtypes_are_refused_with_a_clear_message(rng):
    c = _case(rng, "sum", "scalar", False, 1, "hashed")
    values, scales = quantize.quantize_rows(c["table"], "int8")
    with pytest.raises(ValueError, match="int8 token_table needs token_scales"):
        _lookup(c, values)
    with pytest.raises(ValueError, match="token_scales must be float32.*got float64"):
        _lookup(c, values, tf.cast(scales, tf.float64))
    with pytest.raises(ValueError, match="token_scales is for an int8 token_table; this "
                                         "token_table is float32"):
        _lookup(c, c["table"], scales)
    c64 = dict(c, wtable=tf.cast(c["wtable"], tf.float64))
    with pytest.raises(ValueError, match="needs a float32 weight_table, got float64"):
        _lookup(c64, values, scales)
    # The op itself takes int8 or bfloat16 rows only.
    with pytest.raises((TypeError, tf.errors.InvalidArgumentError),
                       match="attr 'Q' of int32 is not in the list of allowed values: "
                             "int8, bfloat16"):
        _raw(c, tf.cast(values, tf.int32), scales)


def test_other_inputs_are_validated_as_by_the_float32_op(rng):
    c = _case(rng, "sum", "per_hash", False, 1, "hashed")
    values, scales = quantize.quantize_rows(c["table"], "int8")
    bad = dict(c, splits=tf.constant([0, 5, 3, N], tf.int64))
    with pytest.raises(tf.errors.InvalidArgumentError, match="row_splits must be non-decreasing"):
        _lookup(bad, values, scales)
    bad = dict(c, wtable=tf.ones([M_W, 1], tf.float32))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"weight_table must be a matrix"):
        _lookup(bad, values, scales)
    bad = dict(c, weights=tf.ones([N + 1], tf.float32))
    with pytest.raises(tf.errors.InvalidArgumentError, match="weights must be a vector"):
        _lookup(bad, values, scales)


# ---------------------------------------------------------------- gradient

@pytest.mark.parametrize("table_dtype", TABLE_DTYPES)
@pytest.mark.parametrize("in_function", [False, True], ids=["eager", "tf.function"])
def test_differentiating_raises_a_clear_error(rng, table_dtype, in_function):
    c = _case(rng, "sum", "scalar", False, 1, "hashed")
    values, scales = quantize.quantize_rows(c["table"], table_dtype)
    weight_table = tf.Variable(c["wtable"])

    def gradient():
        with tf.GradientTape() as tape:
            out = ops.lookup(c["ids"], c["splits"], c["weights"], values, weight_table,
                             c["sig"], token_scales=scales)
            loss = tf.reduce_sum(out)
        return tape.gradient(loss, weight_table)

    # Eagerly a LookupError; in a tf.function, autograph re-raises it as a
    # StagingError that carries the same message.
    with pytest.raises(Exception if in_function else LookupError,
                       match="has no gradient: int8 and bfloat16 token tables are for "
                             "serving.*Train with float32 tables") as raised:
        tf.function(gradient)() if in_function else gradient()
    assert fused.QUANTIZED_GRADIENT_MESSAGE in str(raised.value)
