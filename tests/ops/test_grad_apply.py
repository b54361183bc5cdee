"""MemRecLookupGradApply: the token table's gradient applied in place inside
the gradient kernel, against the dense gradient and the optimizers' formulas."""
import numpy as np
import pytest
import tensorflow as tf

import reference
from memrec_tf.ops import fused
from memrec_tf.ops.signature import Signature

LEARNING_RATE = np.float32(0.05)
EPSILON = np.float32(1e-7)


def _case(rng, combiner="sum", weight_mode="scalar", weighted=True, m=11, d=5, k=2):
    splits = (0, 3, 3, 9, 12)
    n = splits[-1]
    width = k if weight_mode == "per_hash" else 1
    ids = reference.random_ids(rng, n)
    ids[4:8] = ids[0]  # repeated ids: rows summed before the update
    return dict(
        grad=tf.constant(rng.standard_normal([n if combiner == "none" else len(splits) - 1, d]),
                         tf.float32),
        ids=tf.constant(ids, tf.int64),
        splits=tf.constant([] if combiner == "none" else splits, tf.int64),
        weights=tf.constant(rng.uniform(0.2, 2.0, n) if weighted else np.zeros([0]), tf.float32),
        table=rng.uniform(-1.0, 1.0, [m, d]).astype(np.float32),
        wtable=tf.constant(rng.uniform(0.3, 1.5, [5, width]), tf.float32),
        sig=Signature(num_hashes=k, num_weight_hashes=2, seed=3),
        combiner=combiner, weight_mode=weight_mode)


def _dense_gradients(lib, c):
    return lib.mem_rec_lookup_grad_dense(
        c["grad"], c["ids"], c["splits"], c["weights"], tf.constant(c["table"]), c["wtable"],
        combiner=c["combiner"], weight_mode=c["weight_mode"], **c["sig"].op_attrs())


def _apply(c, table, optimizer, slots=(), learning_rate=LEARNING_RATE, **attrs):
    if optimizer != "sgd":
        attrs.setdefault("epsilon", float(EPSILON))
    return fused.lookup_grad_apply(
        c["grad"], c["ids"], c["splits"], c["weights"], table, c["wtable"], c["sig"], optimizer,
        list(slots), tf.constant(learning_rate), combiner=c["combiner"],
        weight_mode=c["weight_mode"], **attrs)


@pytest.mark.parametrize("combiner", ["none", "sum", "mean", "sqrtn"])
@pytest.mark.parametrize("weight_mode", ["scalar", "per_hash"])
def test_sgd_applies_the_dense_gradient_bit_for_bit(lib, rng, combiner, weight_mode):
    c = _case(rng, combiner, weight_mode)
    token_grad, weight_grad = (g.numpy() for g in _dense_gradients(lib, c))
    table = tf.Variable(c["table"])
    returned = _apply(c, table, "sgd")
    # Keras' SGD: variable -= gradient * learning_rate, untouched rows kept.
    np.testing.assert_array_equal(table.numpy(), c["table"] - token_grad * LEARNING_RATE)
    np.testing.assert_array_equal(returned.numpy(), weight_grad)
    assert (token_grad == 0).all(axis=1).any(), "the case must leave some rows untouched"


def test_adagrad_follows_its_formula_bit_for_bit(lib, rng):
    c = _case(rng)
    token_grad = _dense_gradients(lib, c)[0].numpy()
    start = rng.uniform(0.05, 0.2, c["table"].shape).astype(np.float32)
    table, accumulator = tf.Variable(c["table"]), tf.Variable(start)
    _apply(c, table, "adagrad", [accumulator])
    expected_accumulator = start + token_grad * token_grad
    step = (LEARNING_RATE * token_grad) / np.sqrt(expected_accumulator + EPSILON)
    np.testing.assert_array_equal(accumulator.numpy(), expected_accumulator)
    np.testing.assert_array_equal(table.numpy(), c["table"] - step)


def test_adam_moves_every_row_by_its_formula_bit_for_bit(lib, rng):
    c = _case(rng)
    token_grad = _dense_gradients(lib, c)[0].numpy()
    m0 = rng.uniform(-0.1, 0.1, c["table"].shape).astype(np.float32)
    v0 = rng.uniform(0.0, 0.1, c["table"].shape).astype(np.float32)
    table, momentum, velocity = (tf.Variable(x) for x in (c["table"], m0, v0))
    one_minus = (np.float32(1 - 0.9), np.float32(1 - 0.999))
    _apply(c, table, "adam", [momentum, velocity], one_minus_beta_1=1 - 0.9,
           one_minus_beta_2=1 - 0.999)
    # Keras' Adam, untouched rows (zero gradient) included; LEARNING_RATE
    # stands for the bias-corrected step size.
    m = m0 + (token_grad - m0) * one_minus[0]
    v = v0 + (token_grad * token_grad - v0) * one_minus[1]
    np.testing.assert_array_equal(momentum.numpy(), m)
    np.testing.assert_array_equal(velocity.numpy(), v)
    np.testing.assert_array_equal(table.numpy(),
                                  c["table"] - (m * LEARNING_RATE) / (np.sqrt(v) + EPSILON))
    untouched = (token_grad == 0).all(axis=1)
    assert untouched.any() and not np.array_equal(table.numpy()[untouched],
                                                  c["table"][untouched])


def test_a_value_read_before_the_update_keeps_its_values(lib, rng):
    c = _case(rng)
    table = tf.Variable(c["table"])
    before = tf.convert_to_tensor(table)  # shares the variable's buffer until it is written
    _apply(c, table, "sgd")
    np.testing.assert_array_equal(before.numpy(), c["table"])
    assert not np.array_equal(table.numpy(), c["table"])


def test_the_weight_gradient_reads_the_table_before_its_update(lib, rng):
    c = _case(rng)
    weight_grad = _dense_gradients(lib, c)[1].numpy()
    returned = _apply(c, tf.Variable(c["table"]), "sgd", learning_rate=np.float32(10.0))
    np.testing.assert_array_equal(returned.numpy(), weight_grad)


def test_bad_slots_and_learning_rates_are_refused(lib, rng):
    c = _case(rng)
    table = tf.Variable(c["table"])
    with pytest.raises(tf.errors.InvalidArgumentError, match="takes 1 slot variables, got 0"):
        _apply(c, table, "adagrad", [])
    with pytest.raises(tf.errors.InvalidArgumentError, match="takes 2 slot variables, got 1"):
        _apply(c, table, "adam", [tf.Variable(tf.zeros_like(table))])
    with pytest.raises(tf.errors.InvalidArgumentError, match="must be distinct"):
        _apply(c, table, "adagrad", [table])
    with pytest.raises(tf.errors.InvalidArgumentError, match="of the token table's shape"):
        _apply(c, table, "adagrad", [tf.Variable(tf.zeros([3, 5]))])
    with pytest.raises(tf.errors.InvalidArgumentError, match="learning_rate must be a scalar"):
        _apply(c, table, "sgd", learning_rate=np.float32([0.1, 0.2]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="grad must have"):
        fused.lookup_grad_apply(
            c["grad"][:2], c["ids"], c["splits"], c["weights"], table, c["wtable"], c["sig"],
            "sgd", [], tf.constant(LEARNING_RATE), combiner=c["combiner"])
    np.testing.assert_array_equal(table.numpy(), c["table"])  # nothing applied


def test_a_large_table_sums_as_the_sparse_kernel(lib, rng):
    # Each thread of the dense kernels owns a range of rows; 40,000 rows with
    # 6,000 slots spread over them reach every range.
    c = _case(rng, m=40_000, d=8)
    n = 3000
    ids = reference.random_ids(rng, n)
    ids[n // 2:] = ids[: n - n // 2]  # every id twice
    c.update(ids=tf.constant(ids, tf.int64), splits=tf.constant(np.arange(0, n + 1, 3), tf.int64),
             weights=tf.constant(rng.uniform(0.2, 2.0, n), tf.float32),
             grad=tf.constant(rng.standard_normal([n // 3, 8]), tf.float32))
    token_grad, weight_grad = (g.numpy() for g in _dense_gradients(lib, c))
    rows, values, weight_rows, weight_values = lib.mem_rec_lookup_grad(
        c["grad"], c["ids"], c["splits"], c["weights"], tf.constant(c["table"]), c["wtable"],
        combiner=c["combiner"], weight_mode=c["weight_mode"], **c["sig"].op_attrs())
    densified = np.zeros_like(token_grad)
    densified[rows.numpy()] = values.numpy()
    np.testing.assert_array_equal(token_grad, densified)
    table = tf.Variable(c["table"])
    returned = _apply(c, table, "sgd")
    np.testing.assert_array_equal(table.numpy(), c["table"] - token_grad * LEARNING_RATE)
    np.testing.assert_array_equal(returned.numpy(), weight_grad)
