"""Inputs whose structure disagrees with the ids, or with the layer, are refused."""
import numpy as np
import pytest
import tensorflow as tf

import memrec_tf


@pytest.mark.parametrize("implementation", ["fused", "core"])
def test_weights_of_another_shape_are_refused(lib, implementation):
    del lib
    layer = memrec_tf.MemRecEmbedding(4, 32, combiner="sum", implementation=implementation)
    ids = tf.constant([[1, 2, 3], [4, 5, 6]], tf.int64)
    for weights in (tf.ones([3, 2]), tf.ones([1]), tf.ones([6])):
        with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match="shape"):
            layer(ids, weights=weights)


@pytest.mark.parametrize("implementation", ["fused", "core"])
def test_ragged_weights_with_other_row_lengths_are_refused(lib, implementation):
    del lib
    layer = memrec_tf.MemRecEmbedding(4, 32, combiner="sum", implementation=implementation)
    ids = tf.ragged.constant([[1, 2], [3]], tf.int64)
    with pytest.raises(tf.errors.InvalidArgumentError, match="row lengths"):
        layer(ids, weights=tf.ragged.constant([[1.0], [1.0, 2.0]]))


def test_salt_columns_layer_refuses_other_widths_and_1d_ids():
    layer = memrec_tf.MemRecEmbedding(4, 32, salt_columns=True, implementation="core")
    layer(tf.constant([[1, 2, 3]], tf.int64))
    for ids in (tf.constant([1, 2, 3], tf.int64), tf.constant([[1, 2]], tf.int64)):
        with pytest.raises(ValueError, match="salt_columns"):
            layer(ids)


def test_seed_outside_int64_is_refused():
    with pytest.raises(ValueError, match="int64"):
        memrec_tf.MemRecEmbedding(4, 32, seed=2**64)


def test_memory_report_refuses_an_unknown_layer_name():
    layer = memrec_tf.MemRecEmbedding(4, 32, name="emb")
    layer(tf.constant([1], tf.int64))
    with pytest.raises(ValueError, match="embx"):
        memrec_tf.memory_report(layer, vocab_sizes={"embx": 10})
    assert memrec_tf.memory_report(layer, vocab_sizes={"emb": 10})[0].full_table_bytes == 160
    np.testing.assert_equal(len(memrec_tf.memory_report(layer)), 1)
