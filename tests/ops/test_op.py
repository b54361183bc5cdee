"""The fused MemRecLookup op against the numpy reference and the core path,
and every validation error of the raw op."""
import numpy as np
import pytest
import tensorflow as tf

import reference
from memrec_tf import ops
from memrec_tf.ops import core
from memrec_tf.ops.signature import Signature

COMBINERS = ["none", "sum", "mean", "sqrtn"]
WEIGHT_MODES = ["scalar", "per_hash"]
K, D, M, M_W = 3, 4, 23, 7
VOCAB, HEAD = 30, 3
# Bags with empty ones at the start, in the middle and at the end.
SPLITS = [0, 0, 3, 4, 4, 9, 12, 12]
N = SPLITS[-1]
TOLERANCE = {tf.float32: dict(rtol=1e-5, atol=1e-4), tf.float64: dict(rtol=1e-12, atol=1e-12)}


def _case(rng, combiner, weight_mode, weighted, kw, vocab, dtype, n=N, splits=SPLITS):
    """Inputs of one lookup, as numpy arrays plus the signature."""
    sig = Signature(num_hashes=K, num_weight_hashes=kw, seed=5,
                    vocab_size=VOCAB if vocab else 0, num_head=HEAD if vocab else 0)
    if vocab:  # in-vocabulary ids (head and tail) mixed with out-of-vocabulary ones
        ids = np.where(rng.random(n) < 0.7, rng.integers(0, VOCAB, n),
                       reference.random_ids(rng, n)).astype(np.int64)
    else:
        ids = reference.random_ids(rng, n)
    width = K if weight_mode == "per_hash" else 1
    return dict(
        ids=ids,
        splits=np.array([] if combiner == "none" else splits, np.int64),
        weights=(rng.uniform(-1.0, 2.0, n) if weighted else np.zeros([0])).astype(dtype),
        table=rng.uniform(-1.0, 1.0, [M, D]).astype(dtype),
        wtable=rng.uniform(0.2, 1.5, [M_W, width]).astype(dtype),
        sig=sig, combiner=combiner, weight_mode=weight_mode)


def _fused(c, dtype=None):
    cast = (lambda x: tf.constant(x, dtype)) if dtype is not None else tf.constant
    return ops.lookup(tf.constant(c["ids"], tf.int64), tf.constant(c["splits"], tf.int64),
                      cast(c["weights"]), cast(c["table"]), cast(c["wtable"]), c["sig"],
                      combiner=c["combiner"], weight_mode=c["weight_mode"])


def _core(c):
    return core.lookup(tf.constant(c["ids"], tf.int64), tf.constant(c["splits"], tf.int64),
                       tf.constant(c["weights"]), tf.constant(c["table"]),
                       tf.constant(c["wtable"]), c["sig"],
                       combiner=c["combiner"], weight_mode=c["weight_mode"])


def _expected(c, rows_fn=ops.hash_rows):
    token_rows, weight_rows = rows_fn(tf.constant(c["ids"], tf.int64), c["sig"], M, M_W)
    return reference.lookup(c["splits"], c["weights"], c["table"], c["wtable"],
                            token_rows.numpy(), weight_rows.numpy(),
                            combiner=c["combiner"], weight_mode=c["weight_mode"])


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64], ids=lambda t: t.name)
@pytest.mark.parametrize("vocab", [False, True], ids=["hashed", "vocab"])
@pytest.mark.parametrize("kw", [0, 1, 2], ids=lambda v: f"kw{v}")
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("weight_mode", WEIGHT_MODES)
@pytest.mark.parametrize("combiner", COMBINERS)
def test_fused_and_core_match_reference(rng, device, combiner, weight_mode, weighted, kw, vocab,
                                        dtype):
    c = _case(rng, combiner, weight_mode, weighted, kw, vocab, dtype.as_numpy_dtype)
    with tf.device(device):
        fused = _fused(c)
        expected = _expected(c)
        core_out = _core(c)
    rows = N if combiner == "none" else len(SPLITS) - 1
    assert fused.dtype == dtype and fused.shape == (rows, D)
    np.testing.assert_allclose(fused.numpy(), expected, **TOLERANCE[dtype])
    assert core_out.dtype == dtype and core_out.shape == (rows, D)
    np.testing.assert_allclose(core_out.numpy(), _expected(c, core.hash_rows), **TOLERANCE[dtype])
    np.testing.assert_allclose(core_out.numpy(), fused.numpy(), **TOLERANCE[dtype])
    if combiner != "none":  # the empty bags pool to exact zeros
        empty = [b for b in range(rows) if SPLITS[b] == SPLITS[b + 1]]
        assert empty and not np.any(fused.numpy()[empty])


@pytest.mark.parametrize("dtype,tolerance", [(tf.float16, 2e-3), (tf.bfloat16, 1.6e-2)],
                         ids=["half", "bfloat16"])
@pytest.mark.parametrize("weight_mode", WEIGHT_MODES)
@pytest.mark.parametrize("combiner", COMBINERS)
def test_low_precision_matches_float32(rng, device, combiner, weight_mode, dtype, tolerance):
    c = _case(rng, combiner, weight_mode, True, 2, False, np.float32)
    # Round the inputs to the low precision first: only the output rounding
    # (the kernels accumulate in float32) may differ from the float32 op.
    for key in ("weights", "table", "wtable"):
        c[key] = tf.cast(tf.cast(c[key], dtype), tf.float32).numpy()
    with tf.device(device):
        low = _fused(c, dtype)
    assert low.dtype == dtype
    high = _fused(c, tf.float32).numpy()
    scale = np.abs(high).max()
    np.testing.assert_allclose(tf.cast(low, tf.float32).numpy(), high, rtol=tolerance,
                               atol=tolerance * scale)
    np.testing.assert_allclose(tf.cast(core.lookup(
        tf.constant(c["ids"]), tf.constant(c["splits"]), tf.constant(c["weights"], dtype),
        tf.constant(c["table"], dtype), tf.constant(c["wtable"], dtype), c["sig"],
        combiner=combiner, weight_mode=weight_mode), tf.float32).numpy(),
        high, rtol=tolerance, atol=tolerance * scale)


@pytest.mark.parametrize("sig", [
    Signature(num_hashes=1, num_weight_hashes=0),
    Signature(num_hashes=4, num_weight_hashes=2, seed=-3),
    Signature(num_hashes=16, num_weight_hashes=16, seed=2**62),
    Signature(num_hashes=3, num_weight_hashes=2, seed=9, num_salts=26),
    Signature(num_hashes=3, num_weight_hashes=3, seed=1, vocab_size=500, num_head=20),
    Signature(num_hashes=2, num_weight_hashes=1, vocab_size=2**40),
], ids=["k1", "k4", "k16", "salted", "vocab_head", "vocab_large"])
@pytest.mark.parametrize("tables", [(97, 13), (2**32 - 1, 2**32), (2**35 + 7, 3)],
                         ids=["small", "2^32_boundary", "2^35"])
def test_fused_rows_are_bit_identical_to_core_rows(rng, device, sig, tables):
    m, m_w = tables
    ids = np.concatenate([reference.random_ids(rng, 400), rng.integers(0, 600, 100)])
    with tf.device(device):
        token, weight = ops.hash_rows(tf.constant(ids), sig, m, m_w)
    core_token, core_weight = core.hash_rows(tf.constant(ids), sig, m, m_w)
    assert token.shape == (ids.size, sig.num_hashes)
    assert weight.shape == (ids.size, sig.num_weight_hashes)
    np.testing.assert_array_equal(token.numpy(), core_token.numpy())
    np.testing.assert_array_equal(weight.numpy(), core_weight.numpy())
    assert token.numpy().min() >= 0 and token.numpy().max() < m


def test_extreme_ids(rng):
    ids = np.array([reference.INT64_MIN, reference.INT64_MIN + 1, -1, 0, 1,
                    reference.INT64_MAX - 1, reference.INT64_MAX], np.int64)
    c = _case(rng, "sum", "per_hash", True, 2, False, np.float64, n=ids.size,
              splits=[0, 2, 2, 7])
    c["ids"] = ids
    np.testing.assert_allclose(_fused(c).numpy(), _expected(c), rtol=1e-12)
    np.testing.assert_allclose(_core(c).numpy(), _expected(c), rtol=1e-12)
    # Ids that differ only in the sign bit (or by one) must not share rows.
    rows, _ = ops.hash_rows(tf.constant(ids), c["sig"], 2**20, M_W)
    assert len({tuple(r) for r in rows.numpy()}) == ids.size


@pytest.mark.parametrize("combiner", ["sum", "mean", "sqrtn"])
@pytest.mark.parametrize("num_bags", [0, 3])
def test_empty_batch(device, combiner, num_bags):
    sig = Signature(num_hashes=2, num_weight_hashes=1)
    args = (tf.zeros([0], tf.int64), tf.zeros([num_bags + 1], tf.int64), tf.zeros([0]),
            tf.ones([10, 5]), tf.ones([4, 1]), sig)
    with tf.device(device):
        out = ops.lookup(*args, combiner=combiner)
    assert out.shape == (num_bags, 5)
    assert not np.any(out.numpy())
    core_out = core.lookup(*args, combiner=combiner)
    assert core_out.shape == (num_bags, 5) and not np.any(core_out.numpy())


def test_empty_ids_without_combiner():
    out = ops.lookup(tf.zeros([0], tf.int64), tf.zeros([0], tf.int64), tf.zeros([0]),
                     tf.ones([10, 5]), tf.ones([4, 1]), Signature(), combiner="none")
    assert out.shape == (0, 5)


@pytest.mark.parametrize("combiner,weights", [("mean", [1.0, -1.0]), ("sqrtn", [0.0, 0.0]),
                                              ("mean", [0.0, 0.0])])
def test_zero_denominator_pools_to_zeros(combiner, weights):
    sig = Signature(num_hashes=2, num_weight_hashes=1)
    args = (tf.constant([3, 4, 5], tf.int64), tf.constant([0, 2, 3], tf.int64),
            tf.constant(weights + [2.0]), tf.ones([10, 5]), tf.ones([4, 1]), sig)
    for fn in (ops.lookup, core.lookup):
        out = fn(*args, combiner=combiner).numpy()
        assert not np.any(out[0]), fn
        assert np.all(np.isfinite(out)) and np.all(out[1] != 0)


def test_weight_table_unused_without_weight_hashes(rng):
    # kw = 0: alpha is 1 and an empty weight table is valid.
    c = _case(rng, "sum", "per_hash", True, 0, False, np.float64)
    c["wtable"] = np.zeros([0, K])
    rows, _ = ops.hash_rows(tf.constant(c["ids"]), c["sig"], M, 0)
    expected = reference.lookup(c["splits"], c["weights"], c["table"], c["wtable"],
                                rows.numpy(), np.zeros([N, 0], np.int64), "sum", "per_hash")
    np.testing.assert_allclose(_fused(c).numpy(), expected, rtol=1e-12)


def test_shape_function_gives_static_shapes(lib):
    sig = Signature(num_hashes=2, num_weight_hashes=1)

    @tf.function
    def shapes():
        ids = tf.zeros([7], tf.int64)
        pooled = ops.lookup(ids, tf.constant([0, 3, 7], tf.int64), tf.zeros([0]),
                            tf.ones([10, 5]), tf.ones([4, 1]), sig, combiner="mean")
        per_id = ops.lookup(ids, tf.zeros([0], tf.int64), tf.zeros([0]), tf.ones([10, 5]),
                            tf.ones([4, 1]), sig, combiner="none")
        token, weight = ops.hash_rows(ids, Signature(num_hashes=3, num_weight_hashes=2),
                                      10, 4)
        grads = lib.mem_rec_lookup_grad(tf.ones([7, 5]), ids, tf.zeros([0], tf.int64),
                                        tf.zeros([0]), tf.ones([10, 5]), tf.ones([4, 2]),
                                        num_hashes=2, num_weight_hashes=1, combiner="none",
                                        weight_mode="per_hash")
        assert pooled.shape.as_list() == [2, 5]
        assert per_id.shape.as_list() == [7, 5]
        assert token.shape.as_list() == [7, 3] and weight.shape.as_list() == [7, 2]
        assert [g.shape.as_list() for g in grads] == [[None], [None, 5], [None], [None, 2]]
        return pooled

    assert shapes().shape == (2, 5)


# ---------------------------------------------------------------- validation

def _raw(lib, ids=(1, 2, 3, 4), splits=(0, 2, 4), weights=(), table=(10, 3), wtable=(5, 1),
         **attrs):
    """Calls the raw op. ids, splits and weights are values (or tensors);
    table and wtable are the shapes of all-ones tables."""
    attrs = {"num_hashes": 3, "num_weight_hashes": 1, "combiner": "sum", **attrs}
    as_ids = ids if isinstance(ids, tf.Tensor) else tf.constant(ids, tf.int64)
    as_splits = splits if isinstance(splits, tf.Tensor) else tf.constant(splits, tf.int64)
    return lib.mem_rec_lookup(
        as_ids, as_splits,
        weights if isinstance(weights, tf.Tensor) else tf.constant(weights, tf.float32),
        tf.ones(table), tf.ones(wtable), **attrs)


VALIDATION_CASES = {
    "ids_rank_2": (dict(ids=tf.zeros([2, 2], tf.int64)),
                   r"ids must be a vector \(rank 1\), got shape \[2,2\]"),
    "row_splits_rank_2": (dict(splits=tf.zeros([1, 3], tf.int64)),
                          r"row_splits must be a vector \(rank 1\), got shape \[1,3\]"),
    "row_splits_not_from_0": (dict(splits=(1, 2, 4)), r"row_splits\[0\] must be 0, got 1"),
    "row_splits_decreasing": (dict(splits=(0, 3, 1, 4)),
                              r"row_splits must be non-decreasing, but row_splits\[2\] = 1 "
                              r"< row_splits\[1\] = 3"),
    "row_splits_short_of_n": (dict(splits=(0, 2, 3)),
                              r"row_splits must end at the number of ids \(4\), got "
                              r"row_splits\[2\] = 3"),
    "row_splits_past_n": (dict(splits=(0, 2, 6)),
                          r"row_splits must end at the number of ids \(4\), got "
                          r"row_splits\[2\] = 6"),
    "row_splits_with_combiner_none": (dict(combiner="none"),
                                      r"row_splits must be empty when combiner is 'none', "
                                      r"got shape \[3\]"),
    "row_splits_empty_with_combiner": (dict(splits=()),
                                       r"row_splits must hold B \+ 1 >= 1 offsets for B bags, "
                                       r"got shape \[0\]"),
    "weights_wrong_length": (dict(weights=(1.0, 2.0, 3.0)),
                             r"weights must be a vector of length 0 \(no weights\) or the "
                             r"number of ids \(4\), got shape \[3\]"),
    "weights_rank_2": (dict(weights=tf.ones([4, 1])),
                       r"weights must be a vector .*\(4\), got shape \[4,1\]"),
    "token_table_rank_1": (dict(table=(10,)),
                           r"token_table must be a matrix \[m, d\], got shape \[10\]"),
    "token_table_no_rows": (dict(table=(0, 3)), r"token_table must have at least 1 row: 0"),
    "weight_table_width_scalar": (dict(wtable=(5, 3)),
                                  r"weight_table must be a matrix \[m_w, 1\] \(weight_mode "
                                  r"'scalar' with num_hashes = 3\), got shape \[5,3\]"),
    "weight_table_width_per_hash": (dict(wtable=(5, 1), weight_mode="per_hash"),
                                    r"weight_table must be a matrix \[m_w, 3\] \(weight_mode "
                                    r"'per_hash' with num_hashes = 3\), got shape \[5,1\]"),
    "weight_table_rank_1": (dict(wtable=(5,)),
                            r"weight_table must be a matrix \[m_w, 1\] .*got shape \[5\]"),
    "weight_table_no_rows": (dict(wtable=(0, 1)),
                             r"weight_table must have at least 1 row when num_weight_hashes "
                             r"> 0: 0"),
    "vocab_token_table_too_small": (dict(table=(4, 3), vocab_size=10, num_head=2),
                                    r"token_table has 4 rows but a vocabulary signature needs "
                                    r"at least num_head \+ num_hashes = 5"),
    "vocab_weight_table_too_small": (dict(wtable=(1, 1), num_weight_hashes=2, vocab_size=10),
                                     r"weight_table has 1 rows but a vocabulary signature needs "
                                     r"at least num_weight_hashes = 2"),
    "num_hashes_above_16": (dict(num_hashes=17, wtable=(5, 1)),
                            r"num_hashes must be in \[1, 16\]: 17"),
    "num_weight_hashes_above_16": (dict(num_weight_hashes=17),
                                   r"num_weight_hashes must be in \[0, 16\]: 17"),
    "num_head_without_vocab": (dict(num_head=2),
                               r"num_head needs a vocabulary \(vocab_size > 0\): num_head = 2, "
                               r"vocab_size = 0"),
    "num_head_above_vocab": (dict(num_head=12, vocab_size=10),
                             r"num_head must not exceed vocab_size: 12 > 10"),
}


@pytest.mark.parametrize("case", list(VALIDATION_CASES))
def test_lookup_validation_error(lib, case):
    kwargs, message = VALIDATION_CASES[case]
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        _raw(lib, **kwargs)


def test_valid_baseline_of_the_validation_cases(lib):
    # The defaults of _raw are valid, so each case above fails for its own reason.
    assert _raw(lib).shape == (2, 3)
    assert _raw(lib, combiner="none", splits=()).shape == (4, 3)


def _grad(lib, grad_shape, combiner="sum", splits=(0, 2, 4)):
    return lib.mem_rec_lookup_grad(
        tf.ones(grad_shape), tf.constant([1, 2, 3, 4], tf.int64), tf.constant(splits, tf.int64),
        tf.zeros([0]), tf.ones([10, 3]), tf.ones([5, 1]), num_hashes=3, num_weight_hashes=1,
        combiner=combiner)


@pytest.mark.parametrize("grad_shape,combiner,splits,seen", [
    ([3, 3], "sum", (0, 2, 4), r"\[2, 3\], got \[3,3\]"),
    ([2, 4], "sum", (0, 2, 4), r"\[2, 3\], got \[2,4\]"),
    ([6], "sum", (0, 2, 4), r"\[2, 3\], got \[6\]"),
    ([2, 3], "none", (), r"\[4, 3\], got \[2,3\]"),
])
def test_grad_op_rejects_a_wrong_grad_shape(lib, grad_shape, combiner, splits, seen):
    assert len(_grad(lib, [2, 3])) == 4  # the right shape is accepted
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"grad must have the forward output's shape " + seen):
        _grad(lib, grad_shape, combiner, splits)


def test_grad_op_validates_its_other_inputs_like_the_forward_op(lib):
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"row_splits\[0\] must be 0, got 1"):
        _grad(lib, [2, 3], splits=(1, 2, 4))


def test_core_accepts_weights_that_are_empty_at_run_time():
    sig = Signature(num_hashes=2, num_weight_hashes=1)
    spec = [tf.TensorSpec([None], tf.float32)]

    def make(fn):
        return tf.function(lambda w: fn(tf.constant([1, 2, 3], tf.int64),
                                        tf.constant([0, 3], tf.int64), w, tf.ones([10, 4]),
                                        tf.ones([5, 1]), sig, combiner="sum"),
                           input_signature=spec)

    fused = make(ops.lookup)(tf.zeros([0]))
    np.testing.assert_allclose(make(core.lookup)(tf.zeros([0])).numpy(), fused.numpy())
