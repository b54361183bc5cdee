"""What memrec_tf writes loads the obvious way once memrec_tf is imported:
keras.models.load_model for a trained model, tf.saved_model.load for a fused
export, and memrec_tf.export / memrec_tf.load at the top level."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import memrec_tf
from memrec_tf import models
from memrec_tf.features import FeatureSpec

CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    import memrec_tf
    model = tf.keras.models.load_model(sys.argv[1])
    batch = {"dense": np.ones([3, 2], np.float32),
             "categorical": np.arange(9, dtype=np.int64).reshape(3, 3)}
    np.save(sys.argv[3], model.predict(batch, verbose=0))
    served = tf.saved_model.load(sys.argv[2]).signatures["serving_default"]
    np.save(sys.argv[4], list(served(**{k: tf.constant(v) for k, v in batch.items()})
                              .values())[0].numpy())
""")


@pytest.mark.slow
def test_saved_model_and_fused_export_load_in_a_fresh_process(tmp_path, lib):
    del lib  # the fused export needs the op library
    spec = FeatureSpec.of(2, [10, 20, 30])
    model = models.build_model("dlrm", spec, "memrec",
                               dict(num_token_rows=64, num_weight_rows=8))
    batch = {"dense": np.ones([3, 2], np.float32),
             "categorical": np.arange(9, dtype=np.int64).reshape(3, 3)}
    want = model.predict(batch, verbose=0)
    model.save(tmp_path / "model.keras")
    memrec_tf.export(model, str(tmp_path / "fused"), mode="fused")
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "model.keras"), str(tmp_path / "fused"),
         str(tmp_path / "keras.npy"), str(tmp_path / "served.npy")],
        capture_output=True, text=True, timeout=300, check=False)
    assert child.returncode == 0, child.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "keras.npy"), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "served.npy"), want, rtol=1e-5, atol=1e-6)


def test_export_and_load_are_top_level_functions(tmp_path):
    ids = tf.keras.Input((4,), dtype="int64", name="ids")
    x = tf.keras.layers.Flatten()(memrec_tf.MemRecEmbedding(4, 64, salt_columns=True)(ids))
    model = tf.keras.Model(ids, tf.keras.layers.Dense(1)(x))
    batch = np.arange(8, dtype=np.int64).reshape(2, 4)
    path = memrec_tf.export(model, str(tmp_path / "core"), mode="core")
    served = memrec_tf.load(path).signatures["serving_default"]
    got = list(served(ids=tf.constant(batch)).values())[0].numpy()
    np.testing.assert_allclose(got, model.predict(batch, verbose=0), rtol=1e-5, atol=1e-6)
