"""Exports with token tables stored in 8 or 16 bits (table_dtype): only the
stored tables are written, and both modes serve what the model computes from
those tables."""
import numpy as np
import pytest
import tensorflow as tf

import memrec_tf
from memrec_tf import saved_model as export_lib
from memrec_tf.layers import memrec_embedding as layer_lib
from memrec_tf.ops import quantize

keras = layer_lib.keras


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(5)
    ids = keras.Input((3,), dtype="int64", name="ids")
    weights = keras.Input((3,), dtype="float32", name="weights")
    emb = memrec_tf.MemRecEmbedding(16, 203, num_weight_rows=29, combiner="mean",
                                    weight_mode="per_hash", name="emb")
    out = keras.layers.Dense(1)(emb(ids, weights=weights))
    return keras.Model([ids, weights], out)


def _batch():
    rng = np.random.default_rng(0)
    return {"ids": rng.integers(-2**62, 2**62, size=(64, 3), dtype=np.int64),
            "weights": rng.uniform(0.5, 2.0, size=(64, 3)).astype(np.float32)}


def _as_stored(model, table_dtype):
    """The model's prediction with its token table replaced by the stored rows."""
    layer = model.get_layer("emb")
    trained = layer.token_table.numpy()
    layer.token_table.assign(quantize.round_trip_numpy(trained, table_dtype))
    try:
        batch = _batch()
        return model([tf.constant(batch["ids"]), tf.constant(batch["weights"])]).numpy()
    finally:
        layer.token_table.assign(trained)


def _variables_written(path):
    return {name: shape for name, shape in
            tf.train.list_variables(f"{path}/variables/variables")}


@pytest.mark.parametrize("mode", export_lib.MODES)
@pytest.mark.parametrize("table_dtype", ["int8", "bfloat16"])
def test_stored_tables_serve_what_the_model_computes_from_them(model, tmp_path, mode,
                                                               table_dtype):
    path = memrec_tf.export(model, tmp_path / "m", mode=mode, table_dtype=table_dtype)
    assert export_lib.read_export_info(path)["table_dtype"] == table_dtype
    ops_found = export_lib.memrec_op_types(path)
    assert ops_found == ({"MemRecLookupQuantized"} if mode == "fused" else set())
    batch = _batch()
    served = memrec_tf.load(path).signatures["serving_default"](
        ids=tf.constant(batch["ids"]), weights=tf.constant(batch["weights"]))
    got = list(served.values())[0].numpy()
    want = _as_stored(model, table_dtype)
    if mode == "fused":
        np.testing.assert_array_equal(got, want)  # the same op reads the same rows
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # The float32 token table is not written; the stored one and its scales are.
    shapes = [tuple(s) for s in _variables_written(path).values()]
    assert shapes.count((203, 16)) == 1
    assert ((203,) in shapes) == (table_dtype == "int8")
    # The model itself is untouched: it still trains and predicts in float32.
    layer = model.get_layer("emb")
    assert layer.token_table.dtype == "float32"
    assert getattr(layer, "_stored_token_table", None) is None


def test_an_unknown_table_dtype_is_refused(model, tmp_path):
    with pytest.raises(ValueError, match="table_dtype must be one of float32, bfloat16, int8"):
        memrec_tf.export(model, tmp_path / "m", table_dtype="int4")
    assert not (tmp_path / "m").exists()


def test_int8_export_is_smaller_on_disk(model, tmp_path):
    sizes = {}
    for table_dtype in ("float32", "int8"):
        path = memrec_tf.export(model, tmp_path / table_dtype, table_dtype=table_dtype)
        data = tf.io.gfile.glob(f"{path}/variables/variables.data*")
        sizes[table_dtype] = sum(tf.io.gfile.stat(f).length for f in data)
    # Token table 203 x 16: 12,992 bytes in float32, 4,060 in int8 with scales.
    assert sizes["float32"] - sizes["int8"] >= 12_992 - 4_060
