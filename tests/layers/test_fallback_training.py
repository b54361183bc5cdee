"""The built-in-ops path trains like the fused op under optimizers with
per-row state: its gradients hold each row once, summed, rows ascending."""
import numpy as np
import pytest
import tensorflow as tf

import memrec_tf
from memrec_tf.layers import memrec_embedding as layer_lib

keras = layer_lib.keras


def _train(implementation, optimizer, ids, steps=3, gradient="auto"):
    keras.utils.set_random_seed(0)
    layer = memrec_tf.MemRecEmbedding(4, 8, num_hashes=3, num_weight_rows=3, num_weight_hashes=2,
                                      implementation=implementation)
    layer(ids)
    gradients = None
    for _ in range(steps):
        with tf.GradientTape() as tape, memrec_tf.ops.gradient_format(gradient):
            loss = tf.reduce_sum(tf.square(layer(ids) - 0.5))
            gradients = tape.gradient(loss, layer.trainable_variables)
        optimizer.apply_gradients(zip(gradients, layer.trainable_variables))
    return [v.numpy() for v in layer.trainable_variables], gradients


@pytest.mark.parametrize("make_optimizer", [lambda: keras.optimizers.Adam(0.1),
                                            lambda: keras.optimizers.Adagrad(0.5),
                                            lambda: keras.optimizers.RMSprop(0.05)],
                         ids=["adam", "adagrad", "rmsprop"])
@pytest.mark.parametrize("gradient", ["dense", "sparse"])
def test_core_trains_like_fused_with_repeated_ids(lib, make_optimizer, gradient):
    del lib  # the fused op must be available
    ids = tf.constant([1, 1, 2, 1, 5, 5, 7], tf.int64)  # repeated ids, and rows shared by hashes
    fused, _ = _train("fused", make_optimizer(), ids, gradient=gradient)
    core, _ = _train("core", make_optimizer(), ids, gradient=gradient)
    for a, b in zip(fused, core):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_core_gradient_rows_are_unique_and_ascending():
    ids = tf.constant([3, 3, 3, 9, 1], tf.int64)
    _, gradients = _train("core", keras.optimizers.SGD(0.1), ids, steps=1, gradient="sparse")
    for gradient in gradients:
        assert isinstance(gradient, tf.IndexedSlices)
        rows = gradient.indices.numpy()
        assert list(rows) == sorted(set(rows.tolist()))
