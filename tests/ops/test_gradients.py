"""Gradients of the fused op: numeric checks, agreement with autodiff of the
core path, their sparse and dense forms, and an optimizer step on the layer."""
import numpy as np
import pytest
import tensorflow as tf

import reference
from memrec_tf import MemRecEmbedding, ops
from memrec_tf.ops import core, table_gradients
from memrec_tf.ops.signature import Signature

COMBINERS = ["none", "sum", "mean", "sqrtn"]
WEIGHT_MODES = ["scalar", "per_hash"]
FORMATS = ["dense", "sparse"]


def _inputs(rng, combiner, weight_mode, weighted, kw=2, k=2, m=7, d=3, m_w=5,
            splits=(0, 2, 2, 6), vocab=0, dtype=np.float64):
    n = splits[-1]
    width = k if weight_mode == "per_hash" else 1
    return dict(
        ids=tf.constant(reference.random_ids(rng, n) if not vocab
                        else rng.integers(-3, vocab + 3, n), tf.int64),
        splits=tf.constant([] if combiner == "none" else splits, tf.int64),
        weights=tf.constant(rng.uniform(0.2, 2.0, n) if weighted else np.zeros([0]), dtype),
        table=tf.constant(rng.uniform(-1.0, 1.0, [m, d]), dtype),
        wtable=tf.constant(rng.uniform(0.3, 1.5, [m_w, width]), dtype),
        sig=Signature(num_hashes=k, num_weight_hashes=kw, seed=3, vocab_size=vocab,
                      num_head=2 if vocab else 0),
        combiner=combiner, weight_mode=weight_mode)


def _fn(impl, c):
    module = ops if impl == "fused" else core

    def f(table, wtable):
        return module.lookup(c["ids"], c["splits"], c["weights"], table, wtable, c["sig"],
                             combiner=c["combiner"], weight_mode=c["weight_mode"])
    return f


def _dense(grad, like):
    return np.zeros(like.shape) if grad is None else tf.convert_to_tensor(grad).numpy()


def _grads(impl, c, upstream):
    table, wtable = c["table"], c["wtable"]
    with tf.GradientTape() as tape:
        tape.watch([table, wtable])
        loss = tf.reduce_sum(_fn(impl, c)(table, wtable) * upstream)
    return tape.gradient(loss, [table, wtable])


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("weight_mode", WEIGHT_MODES)
@pytest.mark.parametrize("combiner", COMBINERS)
def test_fused_gradient_matches_numeric_gradient(rng, combiner, weight_mode, weighted):
    c = _inputs(rng, combiner, weight_mode, weighted)
    theoretical, numerical = tf.test.compute_gradient(_fn("fused", c), [c["table"], c["wtable"]])
    for t, n in zip(theoretical, numerical):
        assert np.abs(n).max() > 0  # the check is not vacuous
        np.testing.assert_allclose(t, n, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("gradient", FORMATS)
@pytest.mark.parametrize("vocab", [0, 40], ids=["hashed", "vocab"])
@pytest.mark.parametrize("kw", [0, 1, 2], ids=lambda v: f"kw{v}")
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("weight_mode", WEIGHT_MODES)
@pytest.mark.parametrize("combiner", COMBINERS)
def test_fused_gradient_matches_core_autodiff(rng, device, combiner, weight_mode, weighted, kw,
                                              vocab, gradient):
    if device == "GPU" and gradient == "dense":
        pytest.skip("the dense gradient kernel is CPU only")
    c = _inputs(rng, combiner, weight_mode, weighted, kw=kw, k=3, m=11, d=4, m_w=6,
                splits=(0, 3, 3, 5, 12), vocab=vocab)
    rows = 12 if combiner == "none" else 4
    upstream = tf.constant(rng.normal(size=[rows, 4]))
    with ops.gradient_format(gradient):
        with tf.device(device):
            fused = _grads("fused", c, upstream)
        via_core = _grads("core", c, upstream)
    for f, v, like in zip(fused, via_core, [c["table"], c["wtable"]]):
        assert isinstance(f, tf.IndexedSlices) == (gradient == "sparse")
        assert v is None or isinstance(v, tf.IndexedSlices) == (gradient == "sparse")
        np.testing.assert_allclose(_dense(f, like), _dense(v, like), rtol=1e-10, atol=1e-12)
    assert np.abs(_dense(fused[0], c["table"])).max() > 0
    if kw == 0:  # the weight table is not read
        assert not np.any(_dense(fused[1], c["wtable"]))


@pytest.mark.parametrize("weight_mode", WEIGHT_MODES)
@pytest.mark.parametrize("table_rows", [60, 300_000], ids=["counting_sort", "sort"])
def test_gradients_are_sparse_with_unique_sorted_rows(rng, device, weight_mode, table_rows):
    k, d = 3, 4
    c = _inputs(rng, "mean", weight_mode, True, kw=2, k=k, m=table_rows, d=d, m_w=table_rows,
                splits=(0, 5, 9, 20), dtype=np.float32)
    with tf.device(device), ops.gradient_format("sparse"):
        token_grad, weight_grad = _grads("fused", c, tf.ones([3, d]))
    token_rows, weight_rows = ops.hash_rows(c["ids"], c["sig"], table_rows, table_rows)
    for grad, rows, width in [(token_grad, token_rows, d),
                              (weight_grad, weight_rows, k if weight_mode == "per_hash" else 1)]:
        assert isinstance(grad, tf.IndexedSlices)
        indices = grad.indices.numpy()
        np.testing.assert_array_equal(indices, np.unique(rows.numpy()))  # unique, ascending
        assert grad.values.shape == (indices.size, width)  # no dense [m, d]
        np.testing.assert_array_equal(grad.dense_shape.numpy(), [table_rows, width])
    # The sparse form sums duplicates, so densifying it agrees with the core path.
    with ops.gradient_format("sparse"):
        via_core = _grads("core", c, tf.ones([3, d]))
    np.testing.assert_allclose(tf.convert_to_tensor(token_grad).numpy(),
                               tf.convert_to_tensor(via_core[0]).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("gradient", FORMATS)
def test_gradient_in_a_graph_matches_eager(rng, gradient):
    c = _inputs(rng, "sqrtn", "per_hash", True)
    upstream = tf.constant(rng.normal(size=[3, 3]))
    with ops.gradient_format(gradient):
        eager = _grads("fused", c, upstream)
        graph = tf.function(lambda: _grads("fused", c, upstream))()
    for e, g in zip(eager, graph):
        if gradient == "sparse":
            np.testing.assert_array_equal(e.indices.numpy(), g.indices.numpy())
            e, g = e.values, g.values
        np.testing.assert_allclose(e.numpy(), g.numpy(), rtol=1e-12)


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64, tf.float16, tf.bfloat16],
                         ids=lambda t: t.name)
@pytest.mark.parametrize("weight_mode", WEIGHT_MODES)
@pytest.mark.parametrize("combiner", ["none", "mean"])
def test_dense_gradient_is_the_sparse_one_densified_bit_for_bit(rng, combiner, weight_mode,
                                                                 dtype):
    # Hot rows (60 ids into 7 + 5 rows) and the same summation order.
    c = _inputs(rng, combiner, weight_mode, True, splits=(0, 20, 20, 45, 60))
    for key in ("weights", "table", "wtable"):
        c[key] = tf.cast(c[key], dtype)
    rows = 60 if combiner == "none" else 4
    upstream = tf.cast(rng.normal(size=[rows, 3]), dtype)
    with ops.gradient_format("dense"):
        dense = _grads("fused", c, upstream)
    with ops.gradient_format("sparse"):
        sparse = _grads("fused", c, upstream)
    for dg, sg in zip(dense, sparse):
        assert not isinstance(dg, tf.IndexedSlices) and dg.dtype == dtype
        expected = np.zeros(dg.shape, dg.dtype.as_numpy_dtype)
        expected[sg.indices.numpy()] = sg.values.numpy()
        np.testing.assert_array_equal(dg.numpy(), expected)
    untouched = np.setdiff1d(np.arange(7), np.unique(dense[0].numpy().nonzero()[0]))
    assert untouched.size < 7 and not dense[0].numpy()[untouched].any()


def test_auto_format_is_dense_up_to_the_size_limit(rng, monkeypatch):
    table, wtable = tf.zeros([100, 8]), tf.zeros([50, 1])
    limit = (100 * 8 + 50) * 4
    for max_bytes, dense in [(limit, True), (limit - 1, False)]:
        monkeypatch.setattr(table_gradients, "DENSE_GRADIENT_MAX_BYTES", max_bytes)
        assert table_gradients.use_dense(table, wtable) == (
            dense and not tf.config.list_logical_devices("GPU"))
    with ops.gradient_format("dense"):
        assert table_gradients.use_dense(table, wtable)
        with ops.gradient_format("sparse"):
            assert not table_gradients.use_dense(table, wtable)
        assert table_gradients.use_dense(table, wtable)
    assert table_gradients.current() == "auto"
    with pytest.raises(ValueError, match="gradient format must be one of"):
        with ops.gradient_format("Dense"):
            pass


@pytest.mark.parametrize("impl", ["fused", "core"])
def test_no_gradient_flows_to_per_id_weights(rng, impl):
    c = _inputs(rng, "mean", "scalar", True)
    weights = tf.Variable(c["weights"])
    with tf.GradientTape() as tape:
        out = (ops if impl == "fused" else core).lookup(
            c["ids"], c["splits"], weights, c["table"], c["wtable"], c["sig"], combiner="mean")
    assert tape.gradient(out, weights) is None


@pytest.mark.parametrize("gradient", FORMATS)
def test_empty_batch_has_empty_or_zero_gradients(gradient):
    sig = Signature(num_hashes=2, num_weight_hashes=1)
    table, wtable = tf.Variable(tf.ones([10, 3])), tf.Variable(tf.ones([4, 1]))
    with tf.GradientTape() as tape, ops.gradient_format(gradient):
        out = ops.lookup(tf.zeros([0], tf.int64), tf.zeros([3], tf.int64), tf.zeros([0]),
                         table, wtable, sig, combiner="sum")
        token_grad, weight_grad = tape.gradient(out, [table, wtable])
    if gradient == "sparse":
        assert token_grad.values.shape == (0, 3) and weight_grad.values.shape == (0, 1)
    else:
        np.testing.assert_array_equal(token_grad.numpy(), np.zeros([10, 3]))
        np.testing.assert_array_equal(weight_grad.numpy(), np.zeros([4, 1]))


@pytest.mark.parametrize("gradient", FORMATS)
@pytest.mark.parametrize("combiner", ["none", "sum"])
@pytest.mark.parametrize("weight_mode", WEIGHT_MODES)
def test_heavy_repetition_sums_exactly(rng, device, combiner, weight_mode, gradient):
    if device == "GPU" and gradient == "dense":
        pytest.skip("the dense gradient kernel is CPU only")
    # One id 10,000 times. Small integer gradients and alpha = 1 keep every
    # float32 partial sum exact, so the result must be exact too.
    n, k, d, m = 10_000, 3, 4, 50
    ids = tf.fill([n], tf.constant(123456789, tf.int64))
    width = k if weight_mode == "per_hash" else 1
    sig = Signature(num_hashes=k, num_weight_hashes=2, seed=1)
    table = tf.Variable(rng.integers(-3, 4, [m, d]).astype(np.float32))
    wtable = tf.Variable(np.full([8, width], 0.5, np.float32))  # alpha = 0.5 + 0.5
    upstream = rng.integers(-2, 3, [1, d]).astype(np.float32)
    splits = tf.zeros([0], tf.int64) if combiner == "none" else tf.constant([0, n], tf.int64)
    with tf.device(device), tf.GradientTape() as tape, ops.gradient_format(gradient):
        out = ops.lookup(ids, splits, tf.zeros([0]), table, wtable, sig, combiner=combiner,
                         weight_mode=weight_mode)
        loss = tf.reduce_sum(out * upstream)
        token_grad, weight_grad = tape.gradient(loss, [table, wtable])
    token_rows, weight_rows = ops.hash_rows(ids[:1], sig, m, 8)
    expected = np.zeros([m, d])
    for r in token_rows.numpy()[0]:
        expected[r] += n * upstream[0]
    np.testing.assert_array_equal(tf.convert_to_tensor(token_grad).numpy(), expected)
    if gradient == "sparse":
        assert token_grad.indices.shape[0] == len(set(token_rows.numpy()[0]))
    # d loss / d alpha_i = n * <upstream, M[h_i]>, summed over the weight rows.
    dots = table.numpy()[token_rows.numpy()[0]] @ upstream[0]  # [k]
    per_alpha = n * (dots if weight_mode == "per_hash" else np.array([dots.sum()]))
    expected_w = np.zeros([8, width])
    for g in weight_rows.numpy()[0]:
        expected_w[g] += per_alpha
    np.testing.assert_array_equal(tf.convert_to_tensor(weight_grad).numpy(), expected_w)


def test_heavy_repetition_mean(rng):
    n = 10_000
    c = _inputs(rng, "mean", "per_hash", True, splits=(0, n), dtype=np.float64)
    c["ids"] = tf.fill([n], tf.constant(-42, tf.int64))
    upstream = tf.constant(rng.normal(size=[1, 3]))
    fused = _grads("fused", c, upstream)
    via_core = _grads("core", c, upstream)
    for f, v in zip(fused, via_core):
        np.testing.assert_allclose(tf.convert_to_tensor(f).numpy(),
                                   tf.convert_to_tensor(v).numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("gradient", FORMATS)
def test_adam_updates_only_touched_rows(rng, keras, gradient):
    layer = MemRecEmbedding(output_dim=4, num_token_rows=500, num_hashes=2,
                            num_weight_rows=1000, num_weight_hashes=2, combiner="sum",
                            implementation="fused", seed=4)
    layer.build((None, 3))
    optimizer = keras.optimizers.Adam(learning_rate=0.1)
    before = [v.numpy().copy() for v in (layer.token_table, layer.weight_table)]
    batches = [rng.integers(0, 10**6, [4, 3]), rng.integers(0, 10**6, [2, 3])]
    touched_token, touched_weight = set(), set()
    for ids in batches:
        with tf.GradientTape() as tape, ops.gradient_format(gradient):
            loss = tf.reduce_sum(tf.square(layer(tf.constant(ids, tf.int64)) - 1.0))
            variables = [layer.token_table, layer.weight_table]
            grads = tape.gradient(loss, variables)
        assert all(isinstance(g, tf.IndexedSlices) == (gradient == "sparse") for g in grads)
        optimizer.apply_gradients(zip(grads, variables))
        token_rows, weight_rows = layer.hash_indices(ids)
        touched_token |= set(token_rows.numpy().ravel())
        touched_weight |= set(weight_rows.numpy().ravel())
    for variable, old, touched in [(layer.token_table, before[0], touched_token),
                                   (layer.weight_table, before[1], touched_weight)]:
        new = variable.numpy()
        untouched = np.setdiff1d(np.arange(new.shape[0]), sorted(touched))
        assert untouched.size > 0.9 * new.shape[0]
        np.testing.assert_array_equal(new[untouched], old[untouched])  # bit-identical
        changed = np.any(new != old, axis=1)
        assert changed[sorted(touched)].all()
