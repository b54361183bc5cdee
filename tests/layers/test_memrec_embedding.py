"""MemRecEmbedding: input structures, outputs against the numpy reference,
implementations, serialization, models, mixed precision and memory report.

Runs under the Keras that memrec_tf bound at import (Keras 3 by default).
test_legacy_subprocess_runs_layer_suite_under_tf_keras re-runs this file
and test_embedding_optimizer.py with TF_USE_LEGACY_KERAS=1, so that both
Kerases are tested by one run.
"""
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import tensorflow as tf

import memrec_tf
import reference
from memrec_tf import MemRecEmbedding, ops
from memrec_tf.layers.ids import ids_to_int64
from memrec_tf.ops.signature import Signature

from conftest import REPO_ROOT

D = 4


def _layer(**kwargs):
    args = dict(output_dim=D, num_token_rows=97, num_hashes=3, num_weight_rows=13,
                num_weight_hashes=2, seed=5, embeddings_initializer="uniform",
                weights_initializer="uniform")
    args.update(kwargs)
    return MemRecEmbedding(**args)


def _expected(layer, flat_ids, splits=None, weights=None, combiner=None):
    """Reference output from the layer's rows (hash_indices) and tables."""
    token_rows, weight_rows = layer.hash_indices(flat_ids)
    return reference.lookup(
        [] if splits is None else splits, weights, layer.token_table.numpy(),
        layer.weight_table.numpy(), token_rows.numpy(), weight_rows.numpy(),
        combiner=combiner or "none", weight_mode=layer.weight_mode)


def _close(got, want, rtol=1e-5, atol=1e-5):
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol, atol=atol)


# ------------------------------------------------------------------- shapes

@pytest.mark.parametrize("combiner", [None, "sum", "mean", "sqrtn"])
def test_vector_ids_give_one_row_each(rng, combiner):
    layer = _layer(combiner=combiner)
    ids = reference.random_ids(rng, 6)
    out = layer(tf.constant(ids))
    assert out.shape == (6, D)
    # With a combiner a [B] input is B bags of one: mean and sqrtn of a bag of
    # one unweighted id are that id's embedding.
    _close(out, _expected(layer, ids))


def test_matrix_ids_without_combiner(rng):
    layer = _layer(weight_mode="per_hash")
    ids = reference.random_ids(rng, 15).reshape(3, 5)
    weights = rng.uniform(0.5, 2.0, [3, 5]).astype(np.float32)
    out = layer(tf.constant(ids), weights=tf.constant(weights))
    assert out.shape == (3, 5, D)
    _close(tf.reshape(out, [-1, D]), _expected(layer, ids.ravel(), weights=weights.ravel()))


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("combiner", ["sum", "mean", "sqrtn"])
def test_matrix_ids_with_combiner(rng, combiner, weighted):
    layer = _layer(combiner=combiner)
    ids = reference.random_ids(rng, 12).reshape(3, 4)
    weights = rng.uniform(0.5, 2.0, [3, 4]).astype(np.float32) if weighted else None
    out = layer(tf.constant(ids), weights=None if weights is None else tf.constant(weights))
    assert out.shape == (3, D)
    _close(out, _expected(layer, ids.ravel(), [0, 4, 8, 12],
                          None if weights is None else weights.ravel(), combiner))


def test_rank_3_ids_pool_the_last_axis(rng):
    layer = _layer(combiner="mean")
    ids = rng.integers(0, 1000, [2, 3, 4])
    out = layer(tf.constant(ids))
    assert out.shape == (2, 3, D)
    _close(tf.reshape(out, [-1, D]), _expected(layer, ids.ravel(), np.arange(7) * 4,
                                               combiner="mean"))


def test_matrix_ids_with_no_columns_pool_to_zeros():
    out = _layer(combiner="sum")(tf.zeros([3, 0], tf.int64))
    assert out.shape == (3, D) and not np.any(out.numpy())


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("combiner", ["sum", "mean", "sqrtn"])
def test_ragged_bags_with_combiner(rng, combiner, weighted):
    layer = _layer(combiner=combiner)
    splits = [0, 2, 2, 5, 6]  # an empty bag in the middle
    ids = tf.RaggedTensor.from_row_splits(reference.random_ids(rng, 6), splits)
    w = rng.uniform(0.5, 2.0, 6).astype(np.float32)
    weights = tf.RaggedTensor.from_row_splits(w, splits) if weighted else None
    out = layer(ids, weights=weights)
    assert isinstance(out, tf.Tensor) and out.shape == (4, D)
    _close(out, _expected(layer, ids.flat_values, splits, w if weighted else None, combiner))
    assert not np.any(out.numpy()[1])


def test_ragged_ids_without_combiner_stay_ragged(rng):
    layer = _layer()
    ids = tf.ragged.constant([[1, 2, 3], [], [reference.INT64_MIN]], dtype=tf.int64)
    out = layer(ids)
    assert isinstance(out, tf.RaggedTensor)
    assert out.shape.as_list() == [3, None, D]
    np.testing.assert_array_equal(out.row_splits.numpy(), [0, 3, 3, 4])
    _close(out.flat_values, _expected(layer, ids.flat_values))


def test_ragged_weights_must_be_ragged():
    with pytest.raises(ValueError, match="weights must be a tf.RaggedTensor like the ids, "
                                         "got .*Tensor"):
        _layer(combiner="sum")(tf.ragged.constant([[1, 2], [3]], dtype=tf.int64),
                               weights=tf.ones([3]))


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_sparse_bags_with_combiner(rng, weighted):
    layer = _layer(combiner="mean")
    # Indices out of order and an empty last row: the layer reorders.
    indices = [[2, 1], [0, 0], [2, 0], [0, 1]]
    values = reference.random_ids(rng, 4)
    w = rng.uniform(0.5, 2.0, 4).astype(np.float32)
    ids = tf.SparseTensor(indices, values, dense_shape=[4, 5])
    weights = tf.SparseTensor(indices, w, dense_shape=[4, 5]) if weighted else None
    out = layer(ids, weights=weights)
    assert out.shape == (4, D)
    order = [1, 3, 2, 0]  # row-major order of the indices above
    _close(out, _expected(layer, values[order], [0, 2, 2, 4, 4],
                          w[order] if weighted else None, "mean"))
    assert not np.any(out.numpy()[[1, 3]])


def test_sparse_bags_with_column_gaps(rng):
    # tf.sparse.from_dense of a padded matrix: row 0 holds columns 0 and 2.
    layer = _layer(combiner="sum")
    dense = np.array([[5, 0, 7], [0, 0, 9], [0, 0, 0]], np.int64)
    out = layer(tf.sparse.from_dense(tf.constant(dense)))
    assert out.shape == (3, D)
    _close(out, _expected(layer, np.array([5, 7, 9]), [0, 2, 3, 3], combiner="sum"))


def test_sparse_ids_need_a_combiner():
    ids = tf.sparse.from_dense(tf.constant([[1, 0], [0, 2]], tf.int64))
    with pytest.raises(ValueError, match=r"a tf.SparseTensor input needs a combiner .*"
                                         r"got combiner=None"):
        _layer()(ids)


def test_sparse_weights_must_be_sparse():
    ids = tf.sparse.from_dense(tf.constant([[1, 0], [0, 2]], tf.int64))
    with pytest.raises(ValueError, match="weights must be a tf.SparseTensor like the ids"):
        _layer(combiner="sum")(ids, weights=tf.ones([2, 2]))


# -------------------------------------------------------------------- dtypes

def test_int32_and_int64_ids_agree(rng):
    layer = _layer(combiner="sum")
    ids = rng.integers(-2**31, 2**31 - 1, [4, 3])
    np.testing.assert_array_equal(layer(tf.constant(ids, tf.int32)).numpy(),
                                  layer(tf.constant(ids, tf.int64)).numpy())


@pytest.mark.parametrize("combiner", [None, "sum"])
def test_string_ids(combiner):
    layer = _layer(combiner=combiner)
    texts = [["", "a", "é"], ["日本", "", "naïve"]]
    out = layer(tf.constant(texts))
    assert out.shape == ((2, 3, D) if combiner is None else (2, D))
    as_int = ids_to_int64(tf.constant(texts))
    np.testing.assert_array_equal(out.numpy(), layer(as_int).numpy())
    # Different strings take different rows; the empty string is a value like any other.
    token_rows, _ = layer.hash_indices(tf.constant(["", "a", "é", "日本"]))
    assert len({tuple(r) for r in token_rows.numpy()}) == 4


def test_float_ids_are_rejected():
    with pytest.raises(ValueError, match="ids must be integers or strings, got dtype float32"):
        _layer()(tf.constant([1.0, 2.0]))


def test_scalar_ids_are_rejected():
    with pytest.raises(ValueError, match="needs ids of rank >= 1, got a scalar"):
        _layer()(tf.constant(3, tf.int64))


# ---------------------------------------------------------- implementations

def _twins(**kwargs):
    fused, via_core = _layer(implementation="fused", **kwargs), _layer(implementation="core",
                                                                        **kwargs)
    fused.build((None,))
    via_core.build((None,))
    via_core.token_table.assign(fused.token_table)
    via_core.weight_table.assign(fused.weight_table)
    return fused, via_core


@pytest.mark.parametrize("ragged", [False, True], ids=["dense", "ragged"])
@pytest.mark.parametrize("weight_mode", ["scalar", "per_hash"])
@pytest.mark.parametrize("combiner", [None, "sqrtn"])
def test_fused_and_core_agree_on_outputs_and_gradients(rng, combiner, weight_mode, ragged):
    fused, via_core = _twins(combiner=combiner, weight_mode=weight_mode, vocabulary_size=60,
                             num_head_rows=5)
    values = np.concatenate([rng.integers(0, 60, 6), reference.random_ids(rng, 6)])
    if ragged:
        ids = tf.RaggedTensor.from_row_splits(values, [0, 5, 5, 12])
        weights = tf.RaggedTensor.from_row_splits(rng.uniform(0.5, 2, 12).astype(np.float32),
                                                  [0, 5, 5, 12])
    else:
        ids = tf.constant(values.reshape(3, 4))
        weights = tf.constant(rng.uniform(0.5, 2, [3, 4]).astype(np.float32))
    results = []
    for layer in (fused, via_core):
        with tf.GradientTape() as tape:
            out = layer(ids, weights=weights)
            dense = out.flat_values if isinstance(out, tf.RaggedTensor) else out
            loss = tf.reduce_sum(dense * tf.range(1.0, D + 1.0))
        grads = tape.gradient(loss, [layer.token_table, layer.weight_table])
        results.append([dense.numpy()] + [tf.convert_to_tensor(g).numpy() for g in grads])
    for f, c in zip(*results):
        np.testing.assert_allclose(f, c, rtol=1e-5, atol=1e-5)
    assert np.abs(results[0][1]).max() > 0 and np.abs(results[0][2]).max() > 0


def _op_types(concrete):
    return {op.type for op in concrete.graph.get_operations()}


def test_auto_uses_the_fused_op_outside_xla_and_core_inside(rng):
    layer = _layer(combiner="mean")
    ids = tf.constant(rng.integers(0, 10**6, [4, 3]))
    eager = layer(ids).numpy()
    plain = tf.function(lambda x: layer(x))
    xla = tf.function(lambda x: layer(x), jit_compile=True)
    np.testing.assert_allclose(xla(ids).numpy(), eager, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(plain(ids).numpy(), eager, rtol=1e-6)
    assert "MemRecLookup" in _op_types(plain.get_concrete_function(ids))
    assert "MemRecLookup" not in _op_types(xla.get_concrete_function(ids))


def test_hash_indices_match_the_fused_op(rng):
    layer = _layer(vocabulary_size=40, num_head_rows=3)
    ids = np.concatenate([np.arange(-2, 45), reference.random_ids(rng, 20)])
    token, weight = layer.hash_indices(tf.constant(ids))
    assert token.shape == (ids.size, 3) and weight.shape == (ids.size, 2)
    sig = Signature(num_hashes=3, num_weight_hashes=2, seed=5, vocab_size=40, num_head=3)
    op_token, op_weight = ops.hash_rows(tf.constant(ids), sig, 97, 13)
    np.testing.assert_array_equal(token.numpy(), op_token.numpy())
    np.testing.assert_array_equal(weight.numpy(), op_weight.numpy())
    np.testing.assert_array_equal(token.numpy()[2:5], [[0] * 3, [1] * 3, [2] * 3])
    int32_token, _ = layer.hash_indices(tf.constant([[1, 2], [3, 4]], tf.int32))
    np.testing.assert_array_equal(int32_token.numpy(), token.numpy()[3:7])


def test_salt_columns_separate_equal_raw_ids(rng):
    layer = _layer(salt_columns=True)
    ids = tf.constant([[7, 7, 7], [7, 7, 7]], tf.int64)
    out = layer(ids).numpy()
    assert out.shape == (2, 3, D)
    np.testing.assert_array_equal(out[0], out[1])  # a column is one feature
    token, _ = layer.hash_indices(ids)
    assert len({tuple(r) for r in token.numpy()[:3]}) == 3
    sig = Signature(num_hashes=3, num_weight_hashes=2, seed=5, num_salts=3)
    op_token, _ = ops.hash_rows(tf.reshape(ids, [-1]), sig, 97, 13)
    np.testing.assert_array_equal(token.numpy(), op_token.numpy())
    assert not np.allclose(out[0, 0], out[0, 1]) and not np.allclose(out[0, 1], out[0, 2])
    # Without salt_columns the three columns are the same value.
    plain = _layer()(ids).numpy()
    np.testing.assert_array_equal(plain[0, 0], plain[0, 2])


def test_hash_indices_of_an_unbuilt_salted_layer():
    ids = tf.constant([[7, 7, 7]], tf.int64)
    layer = _layer(salt_columns=True)
    before_build = layer.hash_indices(ids)[0].numpy()
    layer.build((None, 3))
    np.testing.assert_array_equal(before_build, layer.hash_indices(ids)[0].numpy())


def test_salt_columns_needs_a_static_last_dimension():
    with pytest.raises(ValueError, match=r"salt_columns=True needs a static last dimension"):
        _layer(salt_columns=True).build((None, None))


def test_salt_columns_rejects_ragged_ids():
    layer = _layer(salt_columns=True)
    layer.build((None, 2))
    with pytest.raises(ValueError, match="salt_columns=True needs a dense input"):
        layer(tf.ragged.constant([[1, 2], [3]], dtype=tf.int64))


# ------------------------------------------------------------- constructor

BAD_ARGUMENTS = [
    (dict(output_dim=0), r"output_dim must be a positive int, got 0"),
    (dict(output_dim=2.5), r"output_dim must be a positive int, got 2\.5"),
    (dict(num_token_rows=-3), r"num_token_rows must be a positive int, got -3"),
    (dict(num_hashes=0), r"num_hashes must be an int in \[1, 16\], got 0"),
    (dict(num_hashes=17), r"num_hashes must be an int in \[1, 16\], got 17"),
    (dict(num_weight_rows=0), r"num_weight_rows must be a positive int, got 0"),
    (dict(num_weight_hashes=-1), r"num_weight_hashes must be an int in \[0, 16\], got -1"),
    (dict(num_weight_hashes=17), r"num_weight_hashes must be an int in \[0, 16\], got 17"),
    (dict(weight_mode="vector"), r"weight_mode must be one of .*, got 'vector'"),
    (dict(combiner="max"), r"combiner must be one of .*, got 'max'"),
    (dict(implementation="cuda"), r"implementation must be one of .*, got 'cuda'"),
    (dict(seed="7"), r"seed must be an int in the int64 range, got '7'"),
    (dict(salt_columns=True, combiner="sum"),
     r"salt_columns=True needs combiner=None .*got combiner='sum'"),
    (dict(vocabulary_size=-1), r"vocabulary_size must be an int >= 0, got -1"),
    (dict(vocabulary_size=10, num_head_rows=11),
     r"num_head_rows must be an int in \[0, vocabulary_size=10\], got 11"),
    (dict(num_head_rows=1), r"num_head_rows must be an int in \[0, vocabulary_size=0\], got 1"),
    (dict(num_token_rows=3, vocabulary_size=10, num_head_rows=1),
     r"num_token_rows=3 is too small for a vocabulary signature: it needs at least "
     r"num_head \+ num_hashes = 4"),
    (dict(num_weight_rows=1, vocabulary_size=10),
     r"num_weight_rows=1 is too small for a vocabulary signature: it needs at least "
     r"num_weight_hashes = 2"),
]


@pytest.mark.parametrize("kwargs,message", BAD_ARGUMENTS,
                         ids=[",".join(f"{k}={v}" for k, v in b[0].items()) for b in BAD_ARGUMENTS])
def test_constructor_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _layer(**kwargs)


# ---------------------------------------------------------- serialization

def _all_non_default(keras, salted):
    return dict(
        output_dim=5, num_token_rows=37, num_hashes=3, num_weight_rows=11, num_weight_hashes=2,
        weight_mode="per_hash", combiner=None if salted else "mean", seed=11,
        implementation="core",
        embeddings_initializer=keras.initializers.RandomNormal(stddev=0.1, seed=1),
        weights_initializer=keras.initializers.Constant(0.25),
        embeddings_regularizer=keras.regularizers.L2(1e-3), salt_columns=salted,
        vocabulary_size=50, num_head_rows=4, name="memrec_roundtrip")


@pytest.mark.parametrize("salted", [False, True], ids=["combiner", "salt_columns"])
def test_config_round_trip(keras, salted):
    args = _all_non_default(keras, salted)
    layer = MemRecEmbedding(**args)
    config = layer.get_config()
    for key in ("output_dim", "num_token_rows", "num_hashes", "num_weight_rows",
                "num_weight_hashes", "weight_mode", "combiner", "seed", "implementation",
                "salt_columns", "vocabulary_size", "num_head_rows", "name"):
        assert config[key] == args[key], key
    clone = MemRecEmbedding.from_config(config)
    assert clone.get_config() == config
    assert isinstance(clone.embeddings_initializer, type(args["embeddings_initializer"]))
    assert isinstance(clone.weights_initializer, type(args["weights_initializer"]))
    assert isinstance(clone.embeddings_regularizer, type(args["embeddings_regularizer"]))
    ids = tf.constant([[1, 2, 60], [3, 4, -5]], tf.int64)
    out, clone_out = layer(ids), clone(ids)
    # Same initializer seeds and settings: the same tables, rows and outputs.
    np.testing.assert_array_equal(clone.token_table.numpy(), layer.token_table.numpy())
    np.testing.assert_allclose(clone.weight_table.numpy(), 0.25)
    np.testing.assert_array_equal(clone_out.numpy(), out.numpy())
    np.testing.assert_array_equal(clone.hash_indices(ids)[0].numpy(),
                                  layer.hash_indices(ids)[0].numpy())
    assert len(clone.losses) == 1  # the regularizer came back


def test_default_weights_initializer_is_not_serialized(keras):
    layer = _layer(weights_initializer=None, num_weight_hashes=4)
    assert layer.get_config()["weights_initializer"] is None
    clone = MemRecEmbedding.from_config(layer.get_config())
    clone.build((None,))
    np.testing.assert_allclose(clone.weight_table.numpy(), 0.25)  # 1 / num_weight_hashes


def _sequential(keras, combiner="mean", **kwargs):
    return keras.Sequential([
        keras.Input(shape=(3,), dtype="int64"),
        MemRecEmbedding(6, 40, num_weight_rows=9, combiner=combiner, name="memrec", **kwargs),
        keras.layers.Dense(2, name="head"),
    ])


def test_sequential_model(keras, rng):
    model = _sequential(keras)
    ids = rng.integers(0, 1000, [5, 3])
    out = model.predict(ids, verbose=0)
    assert out.shape == (5, 2)
    manual = model.get_layer("head")(model.get_layer("memrec")(tf.constant(ids)))
    np.testing.assert_allclose(out, manual.numpy(), rtol=1e-5, atol=1e-6)


def test_functional_model_with_weights_and_strings(keras, rng):
    ids = keras.Input(shape=(3,), dtype="int64", name="ids")
    weights = keras.Input(shape=(3,), dtype="float32", name="weights")
    tags = keras.Input(shape=(2,), dtype="string", name="tags")
    pooled = MemRecEmbedding(4, 50, combiner="sum", name="ids_emb")(ids, weights=weights)
    tagged = MemRecEmbedding(4, 50, combiner="mean", seed=1, name="tag_emb")(tags)
    out = keras.layers.Concatenate()([pooled, tagged])
    model = keras.Model([ids, weights, tags], out)
    x = [tf.constant(rng.integers(0, 1000, [4, 3])),
         tf.constant(rng.uniform(0, 1, [4, 3]).astype(np.float32)),
         tf.constant([["a", "é"], ["", "日本"], ["a", "a"], ["b", ""]])]
    got = model.predict(x, verbose=0)
    assert got.shape == (4, 8)
    expected = model.get_layer("ids_emb")(x[0], weights=x[1])
    np.testing.assert_allclose(got[:, :4], expected.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[:, 4:], model.get_layer("tag_emb")(x[2]).numpy(),
                               rtol=1e-5, atol=1e-6)


def test_keras_file_round_trip(keras, rng, tmp_path):
    model = _sequential(keras, combiner="sqrtn", weight_mode="per_hash", vocabulary_size=30,
                        num_head_rows=2, embeddings_regularizer="l2")
    ids = rng.integers(-5, 100, [6, 3])
    before = model.predict(ids, verbose=0)
    path = str(tmp_path / "memrec.keras")
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects: the layer is registered
    restored = loaded.get_layer("memrec")
    assert isinstance(restored, MemRecEmbedding)
    assert restored.get_config() == model.get_layer("memrec").get_config()
    np.testing.assert_array_equal(loaded.predict(ids, verbose=0), before)


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
def test_loss_falls_under_fit(keras, rng, jit_compile):
    keras.utils.set_random_seed(1)
    n, vocab = 512, 100
    ids = rng.integers(0, vocab, [n, 2])
    per_id = rng.normal(size=vocab).astype(np.float32)
    y = per_id[ids].sum(axis=1, keepdims=True)
    model = keras.Sequential([
        keras.Input(shape=(2,), dtype="int64"),
        MemRecEmbedding(8, 64, num_weight_rows=16, combiner="sum"),
        keras.layers.Dense(1),
    ])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse", jit_compile=jit_compile)

    def loss():  # eagerly, so that no extra XLA program is compiled for it
        return float(np.mean((model(tf.constant(ids)).numpy() - y) ** 2))

    initial = loss()
    history = model.fit(ids, y, batch_size=64, epochs=6, verbose=0)
    final = loss()
    assert np.all(np.isfinite(history.history["loss"]))
    assert final < 0.8 * initial, (initial, final)


# ------------------------------------------------------- mixed precision

def test_mixed_float16(keras, rng, mixed_float16):
    layer = _layer(combiner="mean")
    ids = tf.constant(rng.integers(0, 10**6, [5, 3]))
    weights = tf.constant(rng.uniform(0.5, 2, [5, 3]).astype(np.float32))
    out = layer(ids, weights=weights)
    assert out.dtype == tf.float16
    assert layer.token_table.dtype == tf.float32 and layer.weight_table.dtype == tf.float32
    keras.mixed_precision.set_global_policy("float32")
    full = _layer(combiner="mean")
    full.build((None, 3))
    full.token_table.assign(layer.token_table)
    full.weight_table.assign(layer.weight_table)
    reference_out = full(ids, weights=weights)
    assert reference_out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy().astype(np.float32), reference_out.numpy(),
                               rtol=1e-2, atol=1e-2 * np.abs(reference_out.numpy()).max())
    # The memory report counts the float32 variables.
    assert memrec_tf.memory_report(layer)[0].token_table_bytes == 97 * D * 4


# ------------------------------------------------------------ memory report

def test_memory_report(keras):
    ids = keras.Input(shape=(2,), dtype="int64")
    a = MemRecEmbedding(8, 1000, num_weight_rows=100, combiner="sum", name="a")(ids)
    b = MemRecEmbedding(4, 500, num_hashes=3, num_weight_rows=50, weight_mode="per_hash",
                        vocabulary_size=20000, combiner="sum", name="b")(ids)
    c = MemRecEmbedding(2, 10, num_weight_rows=10, combiner="sum", name="c")(ids)
    model = keras.Model(ids, keras.layers.Concatenate()([a, b, c]))
    rows = {r.name: r for r in memrec_tf.memory_report(model, vocab_sizes={"a": [1000, 2**20]})}
    assert set(rows) == {"a", "b", "c"}
    assert rows["a"].token_table_bytes == 1000 * 8 * 4
    assert rows["a"].weight_table_bytes == 100 * 1 * 4
    assert rows["a"].bytes == (1000 * 8 + 100 * 1) * 4
    assert rows["a"].full_table_bytes == (1000 + 2**20) * 8 * 4
    assert rows["b"].bytes == (500 * 4 + 50 * 3) * 4
    assert rows["b"].full_table_bytes == 20000 * 4 * 4
    assert rows["b"].ratio == pytest.approx(20000 * 4 / (500 * 4 + 50 * 3))
    assert rows["c"].full_table_bytes == 0 and rows["c"].ratio == 0
    text = memrec_tf.format_report(memrec_tf.memory_report(model))
    assert all(name in text for name in ("a", "b", "c", "total"))


# --------------------------------------------------------------- keras mode

def test_keras_mode_matches_environment(keras_mode, record_property):
    record_property("keras_mode", keras_mode)
    legacy = os.environ.get("TF_USE_LEGACY_KERAS", "") in ("1", "true", "True")
    assert keras_mode == ("tf_keras" if legacy else "keras3")
    assert isinstance(MemRecEmbedding(2, 3), memrec_tf.layers.memrec_embedding.keras.layers.Layer)


@pytest.mark.slow
def test_legacy_subprocess_runs_layer_suite_under_tf_keras(keras_mode, tmp_path):
    """Re-runs this file and test_embedding_optimizer.py under tf-keras
    (TF_USE_LEGACY_KERAS=1) in a child."""
    if keras_mode == "tf_keras":
        pytest.skip("this process already runs tf-keras")
    pytest.importorskip("tf_keras")
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1")
    # The child must test the memrec_tf this process imported; -P keeps the
    # working directory off sys.path so PYTHONPATH decides.
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(memrec_tf.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(
        [package_root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    report = tmp_path / "tf_keras.xml"
    files = [os.path.abspath(__file__),
             os.path.join(os.path.dirname(os.path.abspath(__file__)), "test_embedding_optimizer.py")]
    command = [sys.executable, "-P", "-m", "pytest", *files, "-q", "-x",
               "-p", "no:cacheprovider", "-k", "not legacy_subprocess",
               f"--junitxml={report}", f"--rootdir={REPO_ROOT}"]
    proc = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=400)
    output = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, f"tf-keras run failed:\n{output}"
    suite = ET.parse(report).getroot().find("testsuite")
    total, skipped = int(suite.get("tests")), int(suite.get("skipped"))
    assert int(suite.get("failures")) == 0 and int(suite.get("errors")) == 0, output
    assert total >= 40 and skipped < total // 4, output
    modes = {p.get("value") for p in suite.iter("property") if p.get("name") == "keras_mode"}
    assert modes == {"tf_keras"}, output


def test_memory_report_counts_served_tables_and_mappings(keras):
    from memrec_tf.layers import VocabularyEmbedding

    ids = keras.Input(shape=(2,), dtype="int64")
    a = MemRecEmbedding(16, 1000, num_weight_rows=100, combiner="sum", vocabulary_size=5000,
                        name="a")(ids)
    vocab = VocabularyEmbedding(16, [30, 12], method="memrec",
                                method_options={"num_token_rows": 8}, name="v")
    b = keras.layers.Flatten()(vocab(ids))
    model = keras.Model(ids, keras.layers.Concatenate()([a, b]))
    model(np.zeros([1, 2], np.int64))
    rows = {r.name: r for r in memrec_tf.memory_report(model, table_dtype="int8")}
    assert rows["a"].token_table_bytes == 1000 * (16 + 4)  # int8 and a float32 scale a row
    assert rows["a"].weight_table_bytes == 100 * 4  # the weight table stays float32
    assert rows["a"].full_table_bytes == 5000 * 16 * 4  # against float32 full tables
    mapping = [r for name, r in rows.items() if "mapping" in name]
    assert len(mapping) == 1 and mapping[0].bytes == vocab.mapping_bytes > 0
    text = memrec_tf.format_report(list(rows.values()))
    assert "id->index mapping" in text
