"""The built-in-ops path reading token tables stored for serving (int8 with a
scale per row, bfloat16): the same output as a float32 lookup on the table
`quantize.round_trip` gives, only the rows read converted, and no gradient."""
import numpy as np
import pytest
import tensorflow as tf

import reference
from memrec_tf import ops
from memrec_tf.ops import core, quantize
from memrec_tf.ops.signature import Signature

STORED = ["int8", "bfloat16"]
COMBINERS = ["sum", "mean", "sqrtn", "none"]
SIGNATURES = {
    "hashed": Signature(num_hashes=2, num_weight_hashes=1, seed=5),
    "salted": Signature(num_hashes=3, num_weight_hashes=2, seed=7, num_salts=3),
    "vocab_head": Signature(num_hashes=2, num_weight_hashes=1, seed=9, vocab_size=40,
                            num_head=4),
    "no_weight_hashes": Signature(num_hashes=2, num_weight_hashes=0, seed=1),
}
M, M_W, D = 37, 11, 6
SPLITS = (0, 3, 3, 7, 12)
# Folding an int8 row's scale into the per-id factor rounds each term once
# more than the float32 lookup does: a few float32 ulps.
RTOL = 1e-6


def _case(rng, sig, weight_mode, weighted, combiner):
    n = SPLITS[-1]
    width = sig.num_hashes if weight_mode == "per_hash" else 1
    ids = (rng.integers(-3, sig.vocab_size + 3, n) if sig.vocab_size
           else reference.random_ids(rng, n))
    return dict(
        ids=tf.constant(ids, tf.int64),
        splits=tf.constant([] if combiner == "none" else SPLITS, tf.int64),
        weights=tf.constant(rng.uniform(0.2, 2.0, n) if weighted else np.zeros([0]),
                            tf.float32),
        table=rng.uniform(-1.0, 1.0, [M, D]).astype(np.float32),
        wtable=tf.constant(rng.uniform(0.3, 1.5, [M_W, width]), tf.float32),
        sig=sig, combiner=combiner, weight_mode=weight_mode)


def _lookup(c, table, token_scales=None, weight_table=None):
    return core.lookup(c["ids"], c["splits"], c["weights"], table,
                       c["wtable"] if weight_table is None else weight_table, c["sig"],
                       combiner=c["combiner"], weight_mode=c["weight_mode"],
                       token_scales=token_scales)


@pytest.mark.parametrize("signature", list(SIGNATURES))
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("weight_mode", ["scalar", "per_hash"])
@pytest.mark.parametrize("combiner", COMBINERS)
@pytest.mark.parametrize("table_dtype", STORED)
def test_stored_table_reads_like_its_round_trip(rng, table_dtype, combiner, weight_mode,
                                                weighted, signature):
    c = _case(rng, SIGNATURES[signature], weight_mode, weighted, combiner)
    values, scales = quantize.quantize_rows(c["table"], table_dtype)
    got = _lookup(c, values, scales)
    assert got.dtype == tf.float32
    expected = _lookup(c, quantize.round_trip(c["table"], table_dtype)).numpy()
    assert np.abs(expected).max() > 0  # the comparison is not vacuous
    np.testing.assert_allclose(got.numpy(), expected, rtol=RTOL,
                               atol=RTOL * np.abs(expected).max())


@pytest.mark.parametrize("table_dtype", STORED)
def test_stored_table_differs_from_the_float32_table(rng, table_dtype):
    # The stored rows are really read: the rounding shows against float32.
    c = _case(rng, SIGNATURES["hashed"], "scalar", False, "none")
    values, scales = quantize.quantize_rows(c["table"], table_dtype)
    assert np.abs(_lookup(c, values, scales).numpy() - _lookup(c, c["table"]).numpy()).max() > 0


@pytest.mark.parametrize("table_dtype", STORED)
def test_only_the_rows_read_are_converted(rng, table_dtype):
    c = _case(rng, SIGNATURES["hashed"], "scalar", True, "sum")
    values, scales = quantize.quantize_rows(c["table"], table_dtype)
    graph = tf.function(lambda: _lookup(c, values, scales)).get_concrete_function().graph
    whole = [op.name for op in graph.get_operations() for t in op.outputs
             if t.dtype == tf.float32 and t.shape.as_list() == [M, D]]
    assert whole == []


@pytest.mark.parametrize("table_dtype", STORED)
def test_stored_table_under_xla(rng, table_dtype):
    c = _case(rng, SIGNATURES["salted"], "per_hash", True, "mean")
    values, scales = quantize.quantize_rows(c["table"], table_dtype)
    got = tf.function(lambda: _lookup(c, values, scales), jit_compile=True)()
    expected = _lookup(c, quantize.round_trip(c["table"], table_dtype)).numpy()
    np.testing.assert_allclose(got.numpy(), expected, rtol=RTOL,
                               atol=RTOL * np.abs(expected).max())


def test_int8_table_needs_its_scales(rng):
    c = _case(rng, SIGNATURES["hashed"], "scalar", False, "sum")
    values, _ = quantize.quantize_rows(c["table"], "int8")
    with pytest.raises(ValueError, match="int8 token table needs token_scales"):
        _lookup(c, values)


def test_scales_need_an_int8_table(rng):
    c = _case(rng, SIGNATURES["hashed"], "scalar", False, "sum")
    with pytest.raises(ValueError, match="token_scales go with an int8 token table"):
        _lookup(c, c["table"], tf.ones([M]))


def test_stored_table_needs_a_float32_weight_table(rng):
    c = _case(rng, SIGNATURES["hashed"], "scalar", False, "sum")
    values, scales = quantize.quantize_rows(c["table"], "int8")
    with pytest.raises(ValueError, match="float32 weight table, got float64"):
        _lookup(c, values, scales, weight_table=tf.cast(c["wtable"], tf.float64))


def test_bfloat16_table_refuses_a_gradient(rng):
    c = _case(rng, SIGNATURES["hashed"], "scalar", False, "sum")
    values, _ = quantize.quantize_rows(c["table"], "bfloat16")
    with tf.GradientTape() as tape:
        tape.watch(values)
        loss = tf.reduce_sum(_lookup(c, values))
    with pytest.raises(ValueError, match="no gradient flows to a token table stored as "
                                         "bfloat16"):
        tape.gradient(loss, values)


@pytest.mark.parametrize("table_dtype", STORED)
def test_weight_table_still_takes_its_gradient(rng, table_dtype):
    c = _case(rng, SIGNATURES["hashed"], "scalar", True, "sum")
    values, scales = quantize.quantize_rows(c["table"], table_dtype)
    rounded = quantize.round_trip(c["table"], table_dtype)
    grads = []
    for table, table_scales in ((values, scales), (rounded, None)):
        with tf.GradientTape() as tape, ops.gradient_format("sparse"):
            tape.watch(c["wtable"])
            loss = tf.reduce_sum(_lookup(c, table, table_scales) ** 2)
        grads.append(tape.gradient(loss, c["wtable"]))
    assert isinstance(grads[0], tf.IndexedSlices)
    np.testing.assert_array_equal(grads[0].indices.numpy(), grads[1].indices.numpy())
    np.testing.assert_allclose(grads[0].values.numpy(), grads[1].values.numpy(), rtol=1e-5)
