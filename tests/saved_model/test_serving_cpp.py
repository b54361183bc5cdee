"""The C++ serving path: serving/load_and_predict.cc against the TensorFlow wheel.

The program is compiled once per run (about a minute) with serving/build_cpp.sh
into a temporary directory. It loads the op library with TF_LoadLibrary,
the SavedModel with tensorflow::LoadSavedModel, and runs serving_default as
TensorFlow Serving would; its printed predictions must equal the Keras
model's to 1e-5.
"""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import memrec_tf
from memrec_tf import saved_model as export_lib
from memrec_tf.layers import memrec_embedding as layer_lib
from memrec_tf import ops

from conftest import REPO_ROOT

pytestmark = pytest.mark.slow

keras = layer_lib.keras
BUILD_SCRIPT = os.path.join(REPO_ROOT, "serving", "build_cpp.sh")
TOL = 1e-5


def _missing_toolchain():
    include = tf.sysconfig.get_include()
    lib = tf.sysconfig.get_lib()
    missing = []
    for header in ("tensorflow/cc/saved_model/loader.h", "tensorflow/c/c_api.h"):
        if not os.path.exists(os.path.join(include, header)):
            missing.append(f"header {header} under {include}")
    for name in ("libtensorflow_cc.so.2", "libtensorflow_framework.so.2"):
        if not os.path.exists(os.path.join(lib, name)):
            missing.append(f"{name} in {lib} (the full tensorflow wheel ships it)")
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        missing.append("a C++ compiler (g++)")
    return missing


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    missing = _missing_toolchain()
    if missing:
        pytest.skip("cannot build the C++ loader: missing " + "; ".join(missing))
    output = tmp_path_factory.mktemp("cpp") / "load_and_predict"
    proc = subprocess.run(["bash", BUILD_SCRIPT, str(output)], capture_output=True, text=True,
                          env=dict(os.environ, PYTHON=sys.executable), timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return str(output)


def _predict(binary, export_dir, inputs, op_library=None, work=None):
    """Runs the program; inputs maps a signature input to its rows."""
    args = [binary, "--export_dir", export_dir]
    if op_library:
        args += ["--op_library", op_library]
    for name, rows in inputs.items():
        path = os.path.join(work, f"{name}.csv")
        with open(path, "w") as f:
            for row in rows:
                f.write(",".join(str(v) for v in np.atleast_1d(row)) + "\n")
        args += ["--input", f"{name}={path}"]
    return subprocess.run(args, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))


def _parse(stdout):
    return np.array([[float(v) for v in line.split(",")]
                     for line in stdout.strip().splitlines()])


@pytest.fixture(scope="module")
def ctr(tmp_path_factory):
    keras.utils.set_random_seed(0)
    ids = keras.Input((4,), dtype="int64", name="ids")
    x = keras.layers.Flatten()(memrec_tf.MemRecEmbedding(8, 256, salt_columns=True)(ids))
    model = keras.Model(ids, keras.layers.Dense(1, activation="sigmoid")(x))
    root = tmp_path_factory.mktemp("cpp_exports")
    paths = {mode: export_lib.export(model, str(root / mode), mode=mode)
             for mode in export_lib.MODES}
    rng = np.random.default_rng(4)
    batch = rng.integers(-2**62, 2**62, size=(12, 4), dtype=np.int64)
    batch[:3] = [[0, 1, 2, 3], [-1, -1, -1, -1], [2**63 - 1, -2**63, 7, 7]]
    return model, paths, batch, model.predict(batch, verbose=0)


def test_fused_export_with_the_op_library(binary, ctr, tmp_path):
    _, paths, batch, expected = ctr
    proc = _predict(binary, paths["fused"], {"ids": batch}, ops.library_path(), str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_allclose(_parse(proc.stdout), expected, atol=TOL, rtol=0)


def test_core_export_without_the_op_library(binary, ctr, tmp_path):
    _, paths, batch, expected = ctr
    proc = _predict(binary, paths["core"], {"ids": batch}, None, str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_allclose(_parse(proc.stdout), expected, atol=TOL, rtol=0)


def test_fused_export_without_the_op_library_names_the_fix(binary, ctr, tmp_path):
    _, paths, batch, _ = ctr
    proc = _predict(binary, paths["fused"], {"ids": batch}, None, str(tmp_path))
    assert proc.returncode == 1
    assert "Op type not registered 'MemRecLookup'" in proc.stderr
    assert "--op_library" in proc.stderr and "mode='core'" in proc.stderr


def test_bad_input_file_is_a_usage_error(binary, ctr, tmp_path):
    _, paths, batch, _ = ctr
    proc = _predict(binary, paths["core"], {"ids": batch[:, :3]}, None, str(tmp_path))
    assert proc.returncode == 2
    assert "expects 4 values per line" in proc.stderr
    proc = _predict(binary, paths["core"], {"ids": [["x", 1, 2, 3]]}, None, str(tmp_path))
    assert proc.returncode == 2
    assert "cannot parse 'x' as DT_INT64" in proc.stderr


def test_dict_inputs_with_strings(binary, tmp_path):
    keras.utils.set_random_seed(2)
    price = keras.Input((1,), dtype="float32", name="price")
    cat = keras.Input((3,), dtype="int64", name="cat")
    tags = keras.Input((2,), dtype="string", name="tags")
    parts = [price]
    for name, inp in (("cat_emb", cat), ("tag_emb", tags)):
        parts.append(keras.layers.Flatten()(
            memrec_tf.MemRecEmbedding(4, 64, salt_columns=True, name=name)(inp)))
    out = keras.layers.Dense(2)(keras.layers.Concatenate()(parts))
    model = keras.Model({"price": price, "cat": cat, "tags": tags}, out)
    features = {"price": np.array([[1.5], [-2.0], [0.0]], np.float32),
                "cat": np.array([[1, 2, 3], [4, 5, 6], [-7, 0, 2**40]], np.int64),
                "tags": np.array([["red", "cat"], ["blue", "dog"], ["", "red"]], object)}
    # Keras 3 cannot predict on string arrays; call the model on tensors.
    expected = model({k: tf.constant(v) for k, v in features.items()}, training=False).numpy()
    path = export_lib.export(model, str(tmp_path / "fused"), mode="fused")
    proc = _predict(binary, path, features, ops.library_path(), str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_allclose(_parse(proc.stdout), expected, atol=TOL, rtol=0)
