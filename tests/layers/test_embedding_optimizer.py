"""MemRecEmbedding(embedding_optimizer=...): the token table updated in the
layer's own backward pass, against the Keras optimizers it follows, through
model.fit, checkpoints, learning-rate schedules, export and tf.distribute.

Also run under tf-keras by test_memrec_embedding.py's legacy child.
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import memrec_tf
from memrec_tf import optimizers
from memrec_tf.layers.memrec_embedding import keras

from conftest import REPO_ROOT

B, F, D, M = 32, 3, 4, 64
IMPLEMENTATIONS = ["fused", "core"]


def _ids(seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 1 << 40, (B, F))
    ids[: B // 2, 0] = ids[0, 0]  # repeated ids: rows summed before the update
    return tf.constant(ids, tf.int64)


def _layer(implementation, embedding_optimizer=None, seed=0):
    keras.utils.set_random_seed(seed)
    layer = memrec_tf.MemRecEmbedding(D, M, num_hashes=2, num_weight_rows=16, seed=1,
                                      implementation=implementation,
                                      embedding_optimizer=embedding_optimizer)
    layer.build((B, F))
    return layer


def _train(layer, keras_optimizer, steps, ids=None):
    ids = _ids() if ids is None else ids
    target = tf.constant(np.random.default_rng(1).standard_normal((B, F, D)), tf.float32)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(layer(ids) - target))
        variables = layer.trainable_variables
        keras_optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))

    for _ in range(steps):
        step()
    return layer


def _keras_and_embedding_optimizer(name, learning_rate):
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate), optimizers.SGD(learning_rate)
    return (keras.optimizers.Adagrad(learning_rate, initial_accumulator_value=0.1, epsilon=1e-7),
            optimizers.Adagrad(learning_rate, initial_accumulator_value=0.1, epsilon=1e-7))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("gradient", ["auto", "sparse"])
def test_sgd_trains_as_keras_sgd_bit_for_bit(lib, implementation, gradient):
    # "sparse": the path of tables over 64 MiB, whose update touches only the
    # rows in the gradient's IndexedSlices.
    del lib
    with memrec_tf.ops.gradient_format(gradient):
        reference = _train(_layer(implementation), keras.optimizers.SGD(0.5), steps=3)
        layer = _train(_layer(implementation, optimizers.SGD(0.5)), keras.optimizers.SGD(0.5),
                       steps=3)
    np.testing.assert_array_equal(layer.token_table.numpy(), reference.token_table.numpy())
    np.testing.assert_array_equal(layer.weight_table.numpy(), reference.weight_table.numpy())
    assert not np.array_equal(layer.token_table.numpy(), _layer(implementation).token_table.numpy())


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("gradient", ["auto", "sparse"])
def test_adagrad_trains_as_keras_adagrad(lib, implementation, gradient):
    del lib
    reference_optimizer, embedding_optimizer = _keras_and_embedding_optimizer("adagrad", 0.1)
    with memrec_tf.ops.gradient_format(gradient):
        reference = _train(_layer(implementation), reference_optimizer, steps=3)
        layer = _train(_layer(implementation, embedding_optimizer),
                       keras.optimizers.Adagrad(0.1), steps=3)
    # Not bit for bit: TensorFlow's graph optimizer rewrites Keras' x / sqrt(y)
    # as x * rsqrt(y), which rounds differently.
    np.testing.assert_allclose(layer.token_table.numpy(), reference.token_table.numpy(),
                               rtol=1e-6, atol=1e-8)
    assert int(layer.optimizer_iterations.numpy()) == 3


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("gradient", ["auto", "sparse"])
def test_adam_trains_as_keras_adam(lib, keras_mode, implementation, gradient):
    del lib
    with memrec_tf.ops.gradient_format(gradient):
        reference = _train(_layer(implementation), keras.optimizers.Adam(0.05), steps=3)
        layer = _train(_layer(implementation, optimizers.Adam(0.05)),
                       keras.optimizers.Adam(0.05), steps=3)
    if keras_mode == "tf_keras" and gradient == "sparse":
        # tf-keras' Adam applies IndexedSlices with its own sparse formula
        # (m * beta_1, then g * (1 - beta_1) scattered in), which rounds
        # differently from Keras 3's m + (g - m) * (1 - beta_1).
        np.testing.assert_allclose(layer.token_table.numpy(), reference.token_table.numpy(),
                                   rtol=1e-5, atol=1e-7)
    else:
        np.testing.assert_array_equal(layer.token_table.numpy(),
                                      reference.token_table.numpy())
    np.testing.assert_array_equal(layer.weight_table.numpy(), reference.weight_table.numpy())
    assert int(layer.optimizer_iterations.numpy()) == 3


def test_the_token_table_is_state_not_a_trainable_weight(lib):
    del lib
    layer = _layer("fused", "adagrad")
    assert [w.name.split("/")[-1].split(":")[0] for w in layer.trainable_weights] == [
        "weight_table"]
    names = {w.name.split("/")[-1].split(":")[0] for w in layer.non_trainable_weights}
    assert names == {"token_table", "token_table_accumulator", "embedding_optimizer_iterations"}
    np.testing.assert_allclose(layer.optimizer_slots[0].numpy(), 0.1)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_a_learning_rate_schedule_reads_the_number_of_updates(lib, implementation):
    del lib
    def schedule():
        return keras.optimizers.schedules.ExponentialDecay(0.5, decay_steps=1, decay_rate=0.5)
    reference = _train(_layer(implementation), keras.optimizers.SGD(schedule()), steps=3)
    layer = _train(_layer(implementation, optimizers.SGD(schedule())),
                   keras.optimizers.SGD(schedule()), steps=3)
    np.testing.assert_array_equal(layer.token_table.numpy(), reference.token_table.numpy())
    assert int(layer.optimizer_iterations.numpy()) == 3


def _model(embedding_optimizer, implementation="auto"):
    ids = keras.Input((F,), dtype="int64")
    embedding = memrec_tf.MemRecEmbedding(D, M, num_weight_rows=16, seed=1, name="embedding",
                                          implementation=implementation,
                                          embedding_optimizer=embedding_optimizer)
    out = keras.layers.Dense(1, activation="sigmoid")(keras.layers.Flatten()(embedding(ids)))
    model = keras.Model(ids, out)
    model.compile(keras.optimizers.Adam(0.01), "binary_crossentropy")
    return model, embedding


def _click_data(rows=256):
    rng = np.random.default_rng(2)
    return rng.integers(0, 50, (rows, F)), rng.integers(0, 2, (rows, 1)).astype("float32")


def test_model_fit_updates_the_token_table_every_step(lib):
    del lib
    keras.utils.set_random_seed(0)
    model, embedding = _model(optimizers.Adagrad(0.1))
    before = embedding.token_table.numpy().copy()
    x, y = _click_data()
    model.fit(x, y, batch_size=64, epochs=2, verbose=0)
    assert int(embedding.optimizer_iterations.numpy()) == 8 == int(model.optimizer.iterations)
    assert np.abs(embedding.token_table.numpy() - before).max() > 1e-3


def test_a_checkpoint_resumes_training_where_it_stopped(lib, tmp_path):
    del lib
    straight = _train(_layer("fused", optimizers.Adagrad(0.1)), keras.optimizers.SGD(0.1),
                      steps=4)
    first = _train(_layer("fused", optimizers.Adagrad(0.1)), keras.optimizers.SGD(0.1), steps=2)
    path = tf.train.Checkpoint(layer=first).write(str(tmp_path / "ckpt"))
    resumed = _layer("fused", optimizers.Adagrad(0.1), seed=7)  # other initial values
    tf.train.Checkpoint(layer=resumed).read(path).assert_consumed()
    assert int(resumed.optimizer_iterations.numpy()) == 2
    _train(resumed, keras.optimizers.SGD(0.1), steps=2)
    np.testing.assert_array_equal(resumed.token_table.numpy(), straight.token_table.numpy())
    np.testing.assert_array_equal(resumed.optimizer_slots[0].numpy(),
                                  straight.optimizer_slots[0].numpy())


def test_the_config_round_trips_with_its_schedule(lib):
    del lib
    schedule = keras.optimizers.schedules.ExponentialDecay(0.5, decay_steps=10, decay_rate=0.9)
    layer = _layer("fused", optimizers.Adagrad(schedule, initial_accumulator_value=0.2))
    config = layer.get_config()
    assert config["embedding_optimizer"]["class_name"] == "Adagrad"
    clone = memrec_tf.MemRecEmbedding.from_config(config)
    restored = clone.embedding_optimizer
    assert isinstance(restored, optimizers.Adagrad)
    assert restored.initial_accumulator_value == 0.2
    assert restored.learning_rate.get_config() == schedule.get_config()
    assert memrec_tf.MemRecEmbedding.from_config(
        _layer("fused").get_config()).embedding_optimizer is None


@pytest.mark.parametrize("kwargs, message", [
    (dict(embedding_optimizer="rmsprop"), "embedding_optimizer must be"),
    (dict(embedding_optimizer=optimizers.SGD), "embedding_optimizer must be"),
    (dict(embedding_optimizer="sgd", embeddings_regularizer="l2"), "Pass one of the two"),
])
def test_bad_arguments_name_the_fix(kwargs, message):
    with pytest.raises(ValueError, match=message):
        memrec_tf.MemRecEmbedding(D, M, **kwargs)


@pytest.mark.parametrize("learning_rate", [0, -0.1, "0.1", True, None])
def test_a_bad_learning_rate_is_refused(learning_rate):
    with pytest.raises(ValueError, match="learning_rate must be a positive number"):
        optimizers.SGD(learning_rate)


def test_a_mixed_precision_policy_is_refused(keras_mode):
    if keras_mode == "tf_keras":
        policy = keras.mixed_precision.Policy("mixed_float16")
    else:
        policy = keras.DTypePolicy("mixed_float16")
    layer = memrec_tf.MemRecEmbedding(D, M, embedding_optimizer="sgd", dtype=policy)
    with pytest.raises(ValueError, match="loss scaling would scale"):
        layer.build((B, F))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["core", "fused"])
def test_an_export_serves_what_the_model_predicts(lib, tmp_path, mode):
    del lib
    keras.utils.set_random_seed(0)
    model, _ = _model(optimizers.SGD(0.5))
    x, y = _click_data()
    model.fit(x, y, batch_size=64, epochs=1, verbose=0)
    memrec_tf.export(model, str(tmp_path / mode), mode=mode)
    serve = memrec_tf.load(str(tmp_path / mode)).signatures["serving_default"]
    (served,) = serve(tf.constant(x[:8])).values()
    np.testing.assert_allclose(served.numpy().reshape(-1), model(x[:8]).numpy().reshape(-1),
                               rtol=1e-6)


_MIRRORED_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import memrec_tf
    from memrec_tf.layers.memrec_embedding import keras
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 1 << 40, (512, 4)), rng.integers(0, 2, (512, 1)).astype("float32")

    def train(strategy, name, implementation):
        with strategy.scope():
            keras.utils.set_random_seed(3)
            ids = keras.Input((4,), dtype="int64")
            embedding = memrec_tf.MemRecEmbedding(8, 1024, embedding_optimizer=name,
                                                  implementation=implementation)
            out = keras.layers.Dense(1, activation="sigmoid")(
                keras.layers.Flatten()(embedding(ids)))
            model = keras.Model(ids, out)
            model.compile(keras.optimizers.SGD(0.1), "binary_crossentropy")
        model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(128), epochs=2, verbose=0)
        table = embedding.token_table
        table = table if isinstance(table, tf.Variable) else table.value  # Keras 3 wraps it
        copies = [c.numpy() for c in getattr(table, "values", [table])]
        return copies, int(embedding.optimizer_iterations.numpy())

    result = {}
    for name in ("sgd", "adagrad", "adam"):
        for implementation in ("fused", "core"):
            single, _ = train(tf.distribute.get_strategy(), name, implementation)
            copies, steps = train(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), name,
                                  implementation)
            result[f"{name} {implementation}"] = dict(
                copies=len(copies), steps=steps,
                copies_differ=max(float(np.abs(c - copies[0]).max()) for c in copies),
                from_single=float(np.abs(copies[0] - single[0]).max()),
                moved=float(np.abs(single[0]).max()))
    print("RESULT " + json.dumps(result))
""")


@pytest.mark.slow
def test_mirrored_replicas_apply_one_summed_update(lib, tmp_path):
    del lib
    script = tmp_path / "mirrored.py"
    script.write_text(_MIRRORED_SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(memrec_tf.__file__)))]
        + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    proc = subprocess.run([sys.executable, "-P", str(script)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, (proc.stdout + proc.stderr)[-4000:]
    import json
    for case, r in json.loads(lines[0][len("RESULT "):]).items():
        assert r["copies"] == 2 and r["steps"] == 8, (case, r)
        assert r["copies_differ"] == 0.0, (case, r)  # every replica applied the same update
        # Summing two replicas' gradients rounds differently from one batch's.
        assert r["from_single"] < 1e-6 < r["moved"], (case, r)
