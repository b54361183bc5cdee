"""Numerics of the lookup: IEEE special values, row ranges at the int64
extremes, low-precision tables, and one very large bag.

Every check runs on the fused op and on the built-in-ops (core) path.
"""
import numpy as np
import pytest
import tensorflow as tf

from memrec_tf import MemRecEmbedding, ops
from memrec_tf.ops import core
from memrec_tf.ops.signature import Signature

INT64_MIN = int(np.iinfo(np.int64).min)
INT64_MAX = int(np.iinfo(np.int64).max)
EXTREME_IDS = np.array([INT64_MIN, INT64_MIN + 1, -(2**32) - 1, -(2**32), -(2**31), -2, -1, 0,
                        1, 2, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53 + 1, INT64_MAX - 1,
                        INT64_MAX], np.int64)
PATHS = {"fused": ops.lookup, "core": core.lookup}
M, M_W, D = 31, 7, 4
# Bags: [0, 3), [3, 3) empty, [3, 5), [5, 9).
SPLITS = np.array([0, 3, 3, 5, 9], np.int64)
N = int(SPLITS[-1])


def _inputs(rng, k=2, kw=1, weight_mode="scalar"):
    width = k if weight_mode == "per_hash" else 1
    sig = Signature(num_hashes=k, num_weight_hashes=kw, seed=11)
    return dict(sig=sig, weight_mode=weight_mode,
                ids=rng.integers(-(10**6), 10**6, N).astype(np.int64),
                weights=rng.uniform(0.5, 1.5, N).astype(np.float32),
                table=rng.uniform(-1, 1, [M, D]).astype(np.float32),
                wtable=rng.uniform(0.5, 1.5, [M_W, width]).astype(np.float32))


def _lookup(path, c, combiner, **replace):
    c = dict(c, **replace)
    splits = np.zeros([0], np.int64) if combiner == "none" else SPLITS
    return PATHS[path](tf.constant(c["ids"]), tf.constant(splits), tf.constant(c["weights"]),
                       tf.constant(c["table"]), tf.constant(c["wtable"]), c["sig"],
                       combiner=combiner, weight_mode=c["weight_mode"]).numpy()


def _bag_of(position, combiner):
    return position if combiner == "none" else int(np.searchsorted(SPLITS, position, "right") - 1)


# ------------------------------------------------------------ special values

@pytest.mark.parametrize("combiner", ["none", "sum", "mean", "sqrtn"])
@pytest.mark.parametrize("path", PATHS)
def test_nan_weight_poisons_only_its_own_bag(rng, path, combiner):
    c = _inputs(rng)
    weights = c["weights"].copy()
    weights[4] = np.nan  # bag 2 of the splits, output row 4 without a combiner
    out = _lookup(path, c, combiner, weights=weights)
    nan_rows = np.flatnonzero(np.isnan(out).any(axis=1))
    assert nan_rows.tolist() == [_bag_of(4, combiner)]
    assert np.isnan(out[nan_rows]).all()  # every column of it
    np.testing.assert_allclose(np.delete(out, nan_rows, axis=0),
                               np.delete(_lookup(path, c, combiner), nan_rows, axis=0))


@pytest.mark.parametrize("combiner", ["none", "sum", "mean", "sqrtn"])
@pytest.mark.parametrize("path", PATHS)
def test_infinite_weight_times_zero_row_is_nan(rng, path, combiner):
    c = _inputs(rng)
    weights = c["weights"].copy()
    weights[6] = np.inf
    out = _lookup(path, c, combiner, weights=weights, table=np.zeros([M, D], np.float32))
    bag = _bag_of(6, combiner)
    # Inf * 0 = NaN for the bag of the infinite weight; every other row is 0
    # (mean and sqrtn also divide by an infinite sum there: still NaN).
    assert np.isnan(out[bag]).all()
    assert not np.any(np.delete(out, bag, axis=0))


@pytest.mark.parametrize("path", PATHS)
def test_infinite_table_value_gives_signed_inf_in_sum(rng, path):
    c = _inputs(rng, k=1, kw=0)
    token_rows, _ = core.hash_rows(tf.constant(c["ids"]), c["sig"], M, M_W)
    table = c["table"].copy()
    row = int(token_rows.numpy()[0, 0])  # the one row of id 0, in bag 0
    table[row, 1] = np.inf
    out = _lookup(path, c, "sum", table=table, weights=np.ones(N, np.float32))
    uses = np.isin(token_rows.numpy()[:, 0], [row])
    for b in range(SPLITS.size - 1):
        hit = uses[SPLITS[b]:SPLITS[b + 1]].any()
        assert (out[b, 1] == np.inf) == hit, (b, out[b])
        assert np.isfinite(np.delete(out[b], 1)).all()  # other columns untouched


def _numpy_lookup(c, combiner, token_rows, weight_rows):
    """Pooled output in float64; a zero denominator scales by 0 (as both paths do)."""
    table, wtable = c["table"].astype(np.float64), c["wtable"].astype(np.float64)
    alpha = wtable[weight_rows].sum(axis=1) if weight_rows.shape[1] else np.ones([N, 1])
    z = alpha * table[token_rows].sum(axis=1)
    w = c["weights"].astype(np.float64)
    if combiner == "none":
        return z * w[:, None]
    out = []
    for lo, hi in zip(SPLITS[:-1], SPLITS[1:]):
        denominator = {"sum": 1.0, "mean": w[lo:hi].sum(),
                       "sqrtn": np.sqrt((w[lo:hi] ** 2).sum())}[combiner]
        scale = 0.0 if denominator == 0 else 1.0 / denominator
        out.append((w[lo:hi, None] * z[lo:hi]).sum(axis=0) * scale)
    return np.array(out)


@pytest.mark.parametrize("combiner", ["none", "sum", "mean"])
@pytest.mark.parametrize("which", ["token_table", "weight_table"])
@pytest.mark.parametrize("path", PATHS)
def test_nan_table_rows_reach_exactly_the_ids_that_read_them(rng, path, which, combiner):
    c = _inputs(rng)
    token_rows, weight_rows = (r.numpy() for r in core.hash_rows(
        tf.constant(c["ids"]), c["sig"], M, M_W))
    key = "table" if which == "token_table" else "wtable"
    read = token_rows if which == "token_table" else weight_rows
    poisoned = c[key].copy()
    poisoned[read[1, 0]] = np.nan  # a row read by id 1 (bag 0)
    c[key] = poisoned
    expected = np.isnan(_numpy_lookup(c, combiner, token_rows, weight_rows))
    out = _lookup(path, c, combiner)
    assert expected.any()
    np.testing.assert_array_equal(np.isnan(out), expected)


@pytest.mark.parametrize("weight_mode", ["scalar", "per_hash"])
@pytest.mark.parametrize("path", PATHS)
def test_rows_that_no_id_reads_are_never_read(rng, path, weight_mode):
    # Every row no id maps to is NaN: one stray or out-of-range read would
    # make an output NaN (or garbage).
    c = _inputs(rng, k=3, kw=2, weight_mode=weight_mode)
    c["ids"] = np.concatenate([EXTREME_IDS[:N - 2], [0, -1]]).astype(np.int64)
    token_rows, weight_rows = (r.numpy() for r in core.hash_rows(
        tf.constant(c["ids"]), c["sig"], M, M_W))
    table = np.full([M, D], np.nan, np.float32)
    table[np.unique(token_rows)] = c["table"][np.unique(token_rows)]
    wtable = np.full_like(c["wtable"], np.nan)
    wtable[np.unique(weight_rows)] = c["wtable"][np.unique(weight_rows)]
    assert np.isnan(table).any() and np.isnan(wtable).any()
    for combiner in ("none", "sum", "mean", "sqrtn"):
        out = _lookup(path, c, combiner, table=table, wtable=wtable)
        assert np.isfinite(out).all(), combiner


# -------------------------------------------------------------- row ranges

@pytest.mark.parametrize("rows", [1, 2, 3, 1000, 2**31 - 1, 2**32 - 1, 2**32, 2**32 + 1,
                                  2**53 + 3, 2**62, INT64_MAX])
@pytest.mark.parametrize("vocab", [0, 100, 2**40], ids=["hashed", "vocab100", "vocab2^40"])
def test_hash_rows_stay_in_range_at_the_extremes(rng, rows, vocab):
    k = min(4, rows)
    sig = Signature(num_hashes=k, num_weight_hashes=3, seed=-1, num_salts=3, vocab_size=vocab,
                    num_head=min(vocab, max(rows - k, 0), 10))
    ids = np.concatenate([EXTREME_IDS, rng.integers(INT64_MIN, INT64_MAX, 200, np.int64,
                                                    endpoint=True),
                          np.arange(-3, 120)]).astype(np.int64)
    weight_rows = max(rows, 3)
    fused = [r.numpy() for r in ops.hash_rows(tf.constant(ids), sig, rows, weight_rows)]
    via_core = [r.numpy() for r in core.hash_rows(tf.constant(ids), sig, rows, weight_rows)]
    for got, want, limit in zip(fused, via_core, (rows, weight_rows)):
        np.testing.assert_array_equal(got, want)
        assert got.min() >= 0 and got.max() < limit


# --------------------------------------------------------- low precision

LOW = {"float16": (tf.float16, 2.0**-11), "bfloat16": (tf.bfloat16, 2.0**-8)}


@pytest.mark.parametrize("combiner", ["none", "sum", "mean", "sqrtn"])
@pytest.mark.parametrize("low", LOW)
@pytest.mark.parametrize("path", PATHS)
def test_low_precision_tables_round_the_float32_result(rng, path, low, combiner):
    # Both paths accumulate half and bfloat16 in float32: on inputs already
    # rounded to the low precision, the result is the float32 result rounded
    # once (half an ulp, relative), even over a bag of 2000 ids.
    dtype, half_ulp = LOW[low]
    k, n = 2, 2000
    sig = Signature(num_hashes=k, num_weight_hashes=2, seed=3)
    splits = np.array([0, 1, 1, 1000, n], np.int64)

    def rounded(x):
        return tf.cast(tf.cast(x, dtype), tf.float32).numpy()

    ids = rng.integers(INT64_MIN, INT64_MAX, n, np.int64, endpoint=True)
    inputs = [rounded(rng.uniform(0.5, 2.0, n)), rounded(rng.uniform(-1, 1, [97, 8])),
              rounded(rng.uniform(0.25, 0.75, [13, 1]))]
    splits_in = np.zeros([0], np.int64) if combiner == "none" else splits

    def run(cast):
        return tf.cast(PATHS[path](tf.constant(ids), tf.constant(splits_in),
                                   *[tf.constant(x, cast) for x in inputs], sig,
                                   combiner=combiner), tf.float32).numpy()

    low_out, high = run(dtype), run(tf.float32)
    # The float32 result rounded to the low precision: within half an ulp.
    np.testing.assert_allclose(low_out, high, rtol=half_ulp * 1.01, atol=1e-7)


@pytest.mark.parametrize("combiner", ["none", "sum"])
@pytest.mark.parametrize("low", LOW)
def test_fused_low_precision_gradients_round_the_float32_gradients(rng, low, combiner):
    # The fused gradient of half and bfloat16 tables is summed per row in
    # float32 and rounded once: ids repeat, so rows collect many
    # contributions (its scatter goes through a float scratch block for
    # these types). The core path's gradient is not deduplicated: its
    # per-id values are summed by whoever applies them (a Keras optimizer
    # sums them into the float32 variables of a mixed-precision model).
    path = "fused"
    dtype, half_ulp = LOW[low]
    sig = Signature(num_hashes=2, num_weight_hashes=2, seed=5)
    n = 3000
    ids = tf.constant(rng.integers(0, 400, n), tf.int64)
    splits = tf.constant(np.zeros([0]) if combiner == "none" else [0, 1000, 1000, n], tf.int64)

    def rounded(x):
        return tf.cast(tf.cast(x, dtype), tf.float32).numpy()

    table = rounded(rng.uniform(-1, 1, [61, 8]))
    wtable = rounded(rng.uniform(0.25, 0.75, [17, 1]))
    upstream = rounded(rng.uniform(0.5, 1.0, [n if combiner == "none" else 3, 8]))

    def grads(cast):
        t, w = tf.constant(table, cast), tf.constant(wtable, cast)
        with tf.GradientTape() as tape:
            tape.watch([t, w])
            out = PATHS[path](ids, splits, tf.zeros([0], cast), t, w, sig, combiner=combiner)
            loss = tf.reduce_sum(tf.cast(out, tf.float32) * upstream)
        return [tf.cast(tf.convert_to_tensor(g), tf.float32).numpy()
                for g in tape.gradient(loss, [t, w])]

    for got, want in zip(grads(dtype), grads(tf.float32)):
        # The output is rounded once before the loss, so allow one more ulp.
        np.testing.assert_allclose(got, want, rtol=half_ulp * 4.01, atol=1e-6)


@pytest.mark.parametrize("low", LOW)
@pytest.mark.parametrize("path", PATHS)
def test_large_half_sums_overflow_to_inf_but_means_do_not(path, low):
    # 1000 ids of a row of 100s: the sum (2e5) is past float16's 65504, the
    # mean is 200. A half accumulator would give inf for the mean too.
    dtype, _ = LOW[low]
    sig = Signature(num_hashes=2, num_weight_hashes=0)
    n = 1000
    args = (tf.constant(np.arange(n, dtype=np.int64)), tf.constant([0, n], tf.int64),
            tf.zeros([0], dtype), tf.fill([5, 3], tf.constant(100, dtype)), tf.ones([1, 1], dtype),
            sig)
    total = tf.cast(PATHS[path](*args, combiner="sum"), tf.float32).numpy()
    mean = tf.cast(PATHS[path](*args, combiner="mean"), tf.float32).numpy()
    if dtype == tf.float16:
        assert np.isposinf(total).all()
    else:  # bfloat16 has float32's range
        np.testing.assert_allclose(total, 2e5, rtol=2.0**-8)
    np.testing.assert_array_equal(mean, 200.0)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("implementation", ["fused", "core"])
def test_mixed_precision_layer_is_close_to_float32(rng, policy, implementation):
    kwargs = dict(output_dim=8, num_token_rows=64, num_hashes=2, num_weight_hashes=2,
                  combiner="mean", implementation=implementation)
    ids = tf.constant(rng.integers(0, 10**9, [32, 5]), tf.int64)
    layers = {"float32": MemRecEmbedding(**kwargs), policy: MemRecEmbedding(dtype=policy, **kwargs)}
    for layer in layers.values():
        layer.build(ids.shape)
    table = rng.uniform(-1, 1, [64, 8]).astype(np.float32)
    wtable = rng.uniform(0.25, 0.75, [64, 1]).astype(np.float32)
    for layer in layers.values():
        layer.token_table.assign(table)
        layer.weight_table.assign(wtable)
    exact = np.asarray(layers["float32"](ids))
    low = layers[policy](ids)
    assert low.dtype == (tf.float16 if policy == "mixed_float16" else tf.bfloat16)
    # Each table value is rounded once (relative 2^-11 or 2^-8) before the
    # float32 accumulation, and the result once more: the error is bounded by
    # a few ulps of the largest |z| = alpha * k * max|M| (alpha <= 1.5, k = 2).
    eps = 2.0**-11 if policy == "mixed_float16" else 2.0**-8
    bound = 4 * eps * (1.5 * 2 * np.abs(table).max())
    np.testing.assert_allclose(tf.cast(low, tf.float32).numpy(), exact, rtol=0, atol=bound)


# ------------------------------------------------------------- a huge bag

BIG = 3_000_000


@pytest.fixture(scope="module")
def big_bag():
    rng = np.random.default_rng(5)
    m, d = 4099, 4
    sig = Signature(num_hashes=1, num_weight_hashes=0, seed=2)
    ids = rng.integers(INT64_MIN, INT64_MAX, BIG, np.int64, endpoint=True)
    table = rng.integers(0, 2, [m, d]).astype(np.float32)  # 0 / 1: sums stay integers
    weights = rng.integers(1, 3, BIG).astype(np.float32)  # 1 / 2
    rows = ops.hash_rows(tf.constant(ids), sig, m, 1)[0].numpy()[:, 0]
    counts = np.bincount(rows, minlength=m).astype(np.float64)  # ids per row
    weighted = np.bincount(rows, weights=weights, minlength=m)  # weight per row
    return dict(sig=sig, ids=tf.constant(ids), table=table, weights=weights, rows=rows,
                counts=counts, weighted=weighted, m=m, d=d)


@pytest.mark.slow
@pytest.mark.parametrize("path", PATHS)
def test_one_bag_of_three_million_ids(big_bag, path):
    # Every partial sum is an integer below 2^24, so float32 accumulation is
    # exact: any lost id, overflowed counter or skipped block shows exactly.
    b = big_bag
    splits = tf.constant([0, 0, BIG, BIG], tf.int64)  # empty, huge, empty
    table, no_wtable = tf.constant(b["table"]), tf.ones([1, 1])

    def run(combiner, weights):
        return PATHS[path](b["ids"], splits, weights, table, no_wtable, b["sig"],
                           combiner=combiner).numpy()

    unweighted = b["counts"] @ b["table"].astype(np.float64)
    weighted = b["weighted"] @ b["table"].astype(np.float64)
    assert weighted.max() < 2**24
    np.testing.assert_array_equal(run("sum", tf.zeros([0]))[1], unweighted)
    np.testing.assert_array_equal(run("sum", tf.constant(b["weights"]))[1], weighted)
    total_weight = b["weights"].astype(np.float64).sum()
    np.testing.assert_allclose(run("mean", tf.zeros([0]))[1], unweighted / BIG, rtol=1e-6)
    np.testing.assert_allclose(run("mean", tf.constant(b["weights"]))[1], weighted / total_weight,
                               rtol=1e-6)
    np.testing.assert_allclose(
        run("sqrtn", tf.constant(b["weights"]))[1],
        weighted / np.sqrt((b["weights"].astype(np.float64) ** 2).sum()), rtol=1e-6)
    out = run("sum", tf.zeros([0]))
    assert not out[0].any() and not out[2].any()


@pytest.mark.slow
def test_gradient_of_one_bag_of_three_million_ids(big_bag):
    # d(sum)/d(table row r) is the number of ids that read r: an exact count.
    b = big_bag
    table = tf.constant(b["table"])
    with tf.GradientTape() as tape:
        tape.watch(table)
        out = ops.lookup(b["ids"], tf.constant([0, BIG], tf.int64), tf.zeros([0]), table,
                         tf.ones([1, 1]), b["sig"], combiner="sum")
        loss = tf.reduce_sum(out)
    grad = tape.gradient(loss, table)
    dense = tf.convert_to_tensor(grad).numpy()
    np.testing.assert_array_equal(dense, np.repeat(b["counts"][:, None], b["d"], axis=1))


@pytest.mark.parametrize("weight_mode", ["scalar", "per_hash"])
@pytest.mark.parametrize("combiner", ["none", "sum", "mean"])
def test_fused_and_core_agree_where_float32_overflows(combiner, weight_mode):
    # Rows near float32's largest value: their sum overflows, but each row
    # scaled by alpha = 0.25 first does not. Both paths scale every row by
    # its id's weight and alpha before adding it, so both give the same
    # finite values, and both give inf where even the scaled sum overflows.
    big = np.finfo(np.float32).max / 2
    sig = Signature(num_hashes=2, num_weight_hashes=1)
    table = np.full([4, 3], big, np.float32)
    table[1] = -big
    width = 2 if weight_mode == "per_hash" else 1
    for alpha, finite in ((0.25, True), (4.0, False)):
        wtable = np.full([8, width], alpha, np.float32)
        ids = np.arange(6, dtype=np.int64)
        splits = np.array([0, 3, 6], np.int64) if combiner != "none" else np.zeros([0], np.int64)
        outs = [np.asarray(PATHS[path](tf.constant(ids), tf.constant(splits),
                                       tf.zeros([0]), tf.constant(table), tf.constant(wtable),
                                       sig, combiner=combiner, weight_mode=weight_mode))
                for path in ("fused", "core")]
        np.testing.assert_array_equal(outs[0], outs[1])
        assert np.isfinite(outs[0]).all() == finite
