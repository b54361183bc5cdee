"""SavedModel export: core and fused graphs, loading, saved_model_cli, errors.

The reference for every prediction is the Keras model itself (model.predict,
or calling it on tensors where Keras 3 cannot predict on strings). Fresh
processes, the command-line tools and the tf-keras export run as subprocesses,
all started at once by the `jobs` fixture.
"""
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

import memrec_tf
from memrec_tf import saved_model as export_lib
from memrec_tf.layers import memrec_embedding as layer_lib
from memrec_tf import ops

from conftest import REPO_ROOT, current_keras_mode

keras = layer_lib.keras
MemRecEmbedding = memrec_tf.MemRecEmbedding
TOL = 1e-5
_TF_KERAS_AVAILABLE = importlib.util.find_spec("tf_keras") is not None
# TensorFlow's message for a fused export loaded without the op library.
_BARE = ("Op type not registered 'MemRecLookup' in binary running on host. Make sure "
         "the Op and Kernel are registered in the binary running in this process.")


def _env(**extra):
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.update(extra)
    return env


def _serve(loaded, **inputs):
    fn = loaded.signatures["serving_default"]
    return fn(**{k: tf.constant(v) for k, v in inputs.items()})["output_0"].numpy()


def _ctr_model(seed=0):
    keras.utils.set_random_seed(seed)
    ids = keras.Input((4,), dtype="int64", name="ids")
    x = MemRecEmbedding(8, 256, salt_columns=True, seed=seed, name="emb")(ids)
    x = keras.layers.Flatten()(x)
    out = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(ids, out)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    return model


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(7)
    ids = rng.integers(-2**40, 2**40, size=(16, 4), dtype=np.int64)
    ids[:, 1] = rng.integers(0, 10, size=16)  # small ids repeat across rows
    return ids


@pytest.fixture(scope="module")
def ctr(batch):
    model = _ctr_model()
    labels = np.random.default_rng(1).integers(0, 2, size=(16, 1)).astype(np.float32)
    model.train_on_batch(batch, labels)  # one step: trained, not initial, weights
    return model


@pytest.fixture(scope="module")
def expected(ctr, batch):
    return ctr.predict(batch, verbose=0)


@pytest.fixture(scope="module")
def exports(ctr, tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    return {mode: export_lib.export(ctr, str(root / mode / "1"), mode=mode)
            for mode in export_lib.MODES}


@pytest.fixture(scope="module")
def loaded(exports):
    return {mode: export_lib.load(path) for mode, path in exports.items()}


# ------------------------------------------------------------- graph content


def test_core_export_holds_only_tensorflow_ops(exports):
    assert export_lib.memrec_op_types(exports["core"]) == set()
    info = export_lib.read_export_info(exports["core"])
    assert info["mode"] == "core" and info["memrec_ops"] == []
    assert info["inputs"] == {"ids": {"dtype": "int64", "shape": [None, 4]}}


def test_fused_export_holds_memrec_lookup(exports):
    assert export_lib.memrec_op_types(exports["fused"]) == {"MemRecLookup"}
    info = export_lib.read_export_info(exports["fused"])
    assert info["mode"] == "fused"
    assert info["memrec_tf_version"] == memrec_tf.__version__
    assert info["tensorflow_version"] == tf.__version__
    assert "re-export with mode='core'" in info["load_hint"]


def test_export_restores_layer_implementation(ctr, exports):
    assert ctr.get_layer("emb").implementation == "auto"


def test_export_restores_implementation_on_error(ctr, tmp_path, monkeypatch):
    def fail(model, path, specs, **options):
        assert model.get_layer("emb").implementation == "core"
        raise RuntimeError("disk full")

    monkeypatch.setattr(export_lib.writing, "write_saved_model", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        export_lib.export(ctr, str(tmp_path / "m"))
    assert ctr.get_layer("emb").implementation == "auto"
    assert os.listdir(tmp_path) == []


def test_core_export_refuses_a_graph_with_memrec_ops(ctr, tmp_path, monkeypatch):
    # A layer that ignores the implementation switch must not yield a "core"
    # export that a stock TensorFlow cannot load.
    monkeypatch.setattr(layer_lib.MemRecEmbedding, "_uses_fused", lambda self: True)
    with pytest.raises(export_lib.ExportError, match="MemRecLookup"):
        export_lib.export(ctr, str(tmp_path / "m"), mode="core")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- predictions


def test_signature_takes_raw_named_inputs(loaded):
    for mode in export_lib.MODES:
        fn = loaded[mode].signatures["serving_default"]
        _, inputs = fn.structured_input_signature
        assert {k: (v.dtype, v.shape.as_list()) for k, v in inputs.items()} == {
            "ids": (tf.int64, [None, 4])}
        assert list(fn.structured_outputs) == ["output_0"]


def test_fused_equals_core_equals_predict(loaded, batch, expected):
    core = _serve(loaded["core"], ids=batch)
    fused = _serve(loaded["fused"], ids=batch)
    np.testing.assert_allclose(core, expected, atol=TOL, rtol=0)
    np.testing.assert_allclose(fused, expected, atol=TOL, rtol=0)
    np.testing.assert_allclose(fused, core, atol=TOL, rtol=0)


def test_string_id_model(tmp_path):
    keras.utils.set_random_seed(3)
    tokens = keras.Input((3,), dtype="string", name="tokens")
    x = keras.layers.Flatten()(MemRecEmbedding(4, 128, salt_columns=True, name="emb")(tokens))
    model = keras.Model(tokens, keras.layers.Dense(2)(x))
    values = np.array([["red", "cat", ""], ["blue", "dog", "é"], ["red", "red", "x"]],
                      dtype=object)
    want = model(tf.constant(values), training=False).numpy()
    results = {}
    for mode in export_lib.MODES:
        path = export_lib.export(model, str(tmp_path / mode), mode=mode)
        loaded = export_lib.load(path)
        _, inputs = loaded.signatures["serving_default"].structured_input_signature
        assert inputs["tokens"].dtype == tf.string
        results[mode] = _serve(loaded, tokens=values)
        np.testing.assert_allclose(results[mode], want, atol=TOL, rtol=0)
    np.testing.assert_allclose(results["fused"], results["core"], atol=TOL, rtol=0)


def _dict_model():
    keras.utils.set_random_seed(5)
    price = keras.Input((1,), dtype="float32", name="price")
    cat = keras.Input((3,), dtype="int64", name="cat")
    emb = keras.layers.Flatten()(MemRecEmbedding(4, 64, salt_columns=True, name="emb")(cat))
    hidden = keras.layers.Dense(4, activation="relu")(keras.layers.Concatenate()([price, emb]))
    return keras.Model({"price": price, "cat": cat}, keras.layers.Dense(1)(hidden))


def test_dict_input_model(tmp_path):
    model = _dict_model()
    features = {"price": np.array([[9.5], [0.0], [-3.25]], np.float32),
                "cat": np.array([[1, 2, 3], [4, 5, 6], [1, 2, 3]], np.int64)}
    want = model.predict(features, verbose=0)
    results = {}
    for mode in export_lib.MODES:
        path = export_lib.export(model, str(tmp_path / mode), mode=mode)
        loaded = export_lib.load(path)
        _, inputs = loaded.signatures["serving_default"].structured_input_signature
        assert {k: v.dtype for k, v in inputs.items()} == {"price": tf.float32,
                                                           "cat": tf.int64}
        results[mode] = _serve(loaded, **features)
        np.testing.assert_allclose(results[mode], want, atol=TOL, rtol=0)
    np.testing.assert_allclose(results["fused"], results["core"], atol=TOL, rtol=0)
    assert export_lib.memrec_op_types(str(tmp_path / "core")) == set()


# ------------------------------------------------------- fresh processes, CLI

_FRESH_SCRIPT = textwrap.dedent("""
    # A Python that never imports memrec_tf: loads the core export with
    # tf.saved_model.load, tries the fused one, then runs the stock
    # saved_model_cli (the code behind the `saved_model_cli` command) on the
    # core export.
    import json, sys
    import numpy as np
    import tensorflow as tf
    core_dir, fused_dir, ids_path, out_path, cli_outdir, ids_expr = sys.argv[1:]
    ids = tf.constant(np.load(ids_path))
    core = tf.saved_model.load(core_dir).signatures["serving_default"](ids=ids)
    result = {"core": core["output_0"].numpy().tolist()}
    try:
        tf.saved_model.load(fused_dir)
        result["fused_error"] = None
    except Exception as e:
        result["fused_error"] = f"{type(e).__name__}: {e}"
    result["memrec_tf_imported"] = any(m.split(".")[0] == "memrec_tf" for m in sys.modules)
    with open(out_path, "w") as f:
        json.dump(result, f)
    from tensorflow.python.tools import saved_model_cli
    sys.argv = ["saved_model_cli", "run", "--dir", core_dir, "--tag_set", "serve",
                "--signature_def", "serving_default", "--input_exprs", ids_expr,
                "--outdir", cli_outdir]
    saved_model_cli.main()
""")

_TF_KERAS_SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import numpy as np
    import tensorflow as tf
    import memrec_tf
    from memrec_tf import saved_model
    from memrec_tf.ops import quantize
    keras = tf.keras
    assert keras.layers.Layer.__module__.startswith("tf_keras"), keras.layers.Layer.__module__
    ids = keras.Input((4,), dtype="int64", name="ids")
    x = keras.layers.Flatten()(memrec_tf.MemRecEmbedding(8, 256, salt_columns=True)(ids))
    model = keras.Model(ids, keras.layers.Dense(1, activation="sigmoid")(x))
    batch = np.arange(-20, 20, dtype=np.int64).reshape(10, 4) * 977
    wants = {"float32": model.predict(batch, verbose=0)}
    layer = model.layers[1]
    trained = layer.token_table.numpy()
    layer.token_table.assign(quantize.round_trip_numpy(trained, "int8"))
    wants["int8"] = model.predict(batch, verbose=0)
    layer.token_table.assign(trained)
    root = sys.argv[1]
    for mode, table_dtype in (("core", "float32"), ("fused", "float32"), ("core", "int8"),
                              ("fused", "int8")):
        want = wants[table_dtype]
        path = memrec_tf.export(model, os.path.join(root, mode + table_dtype), mode=mode,
                                table_dtype=table_dtype)
        assert bool(saved_model.memrec_op_types(path)) == (mode == "fused"), mode
        got = memrec_tf.load(path).signatures["serving_default"](ids=tf.constant(batch))
        np.testing.assert_allclose(got["output_0"].numpy(), want, atol=1e-5, rtol=0)
        # The TF1 loader that saved_model_cli run and TF Serving use.
        with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
            meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], path)
            sig = meta.signature_def["serving_default"]
            out = sess.run(sig.outputs["output_0"].name,
                           {sig.inputs["ids"].name: batch})
        np.testing.assert_allclose(out, want, atol=1e-5, rtol=0)
    print("OK")
""")


class _Job:
    """A subprocess whose output goes to files (no pipe can fill up)."""

    def __init__(self, name, args, cwd, work, **env):
        self.out_path = work / f"{name}.stdout"
        self.err_path = work / f"{name}.stderr"
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(args, cwd=cwd, env=_env(**env), stdout=out,
                                         stderr=err, text=True)

    def result(self, timeout=180):
        self.returncode = self.proc.wait(timeout=timeout)
        self.stdout = self.out_path.read_text()
        self.stderr = self.err_path.read_text()
        return self


@pytest.fixture(scope="module")
def jobs(exports, batch, tmp_path_factory):
    """Every subprocess of this file, started at once: each spends most of its
    time importing TensorFlow, so running them side by side saves minutes."""
    work = tmp_path_factory.mktemp("jobs")
    np.save(work / "ids.npy", batch)
    (work / "fresh.py").write_text(_FRESH_SCRIPT)
    (work / "tfk.py").write_text(_TF_KERAS_SCRIPT)
    ids_expr = "ids=" + json.dumps(batch.tolist())
    run_args = ["run", "--tag_set", "serve", "--signature_def", "serving_default",
                "--input_exprs", ids_expr]
    for name in ("stock_core", "memrec_fused", "tfk"):
        (work / name).mkdir()
    memrec_cli = [sys.executable, "-m", "memrec_tf.app.saved_model_cli"]
    started = {
        # Never imports memrec_tf, and reports whether anything did.
        "fresh": _Job("fresh", [sys.executable, "fresh.py", exports["core"],
                                exports["fused"], str(work / "ids.npy"),
                                str(work / "fresh.json"), str(work / "stock_core"),
                                ids_expr], str(work), work),
        "memrec_show": _Job("memrec_show", memrec_cli + [
            "show", "--dir", exports["fused"], "--all"], REPO_ROOT, work),
        "memrec_fused": _Job("memrec_fused", memrec_cli + run_args + [
            "--dir", exports["fused"], "--outdir", str(work / "memrec_fused")], REPO_ROOT, work),
    }
    if _TF_KERAS_AVAILABLE and current_keras_mode() == "keras3":
        started["tfk"] = _Job("tfk", [sys.executable, str(work / "tfk.py"), str(work / "tfk")],
                              REPO_ROOT, work, TF_USE_LEGACY_KERAS="1")
    results = {name: job.result() for name, job in started.items()}
    results["work"] = work
    return results


@pytest.fixture(scope="module")
def fresh_process(jobs):
    """Both exports loaded in a Python that never imports memrec_tf."""
    job = jobs["fresh"]
    assert job.returncode == 0, job.stderr[-3000:]
    return json.loads((jobs["work"] / "fresh.json").read_text())


@pytest.mark.slow
def test_core_export_serves_in_a_process_without_memrec_tf(fresh_process, expected):
    assert fresh_process["memrec_tf_imported"] is False
    np.testing.assert_allclose(np.array(fresh_process["core"]), expected, atol=TOL, rtol=0)


@pytest.mark.slow
def test_fused_export_needs_the_op_library_in_a_fresh_process(fresh_process):
    assert fresh_process["memrec_tf_imported"] is False
    assert "MemRecLookup" in fresh_process["fused_error"]
    assert "not registered" in fresh_process["fused_error"]


@pytest.mark.slow
def test_stock_saved_model_cli_runs_core_export(jobs, expected):
    job = jobs["fresh"]
    assert job.returncode == 0, job.stderr[-3000:]
    np.testing.assert_allclose(np.load(jobs["work"] / "stock_core" / "output_0.npy"),
                               expected, atol=TOL, rtol=0)


@pytest.mark.slow
def test_memrec_saved_model_cli_show_fused_export(jobs):
    job = jobs["memrec_show"]
    assert job.returncode == 0, job.stderr[-3000:]
    assert "signature_def['serving_default']" in job.stdout
    assert "inputs['ids']" in job.stdout
    assert "MemRecLookup" in job.stdout  # the op list of the meta graph
    assert "could not be listed due to the existence of custom ops" not in job.stdout


@pytest.mark.slow
def test_memrec_saved_model_cli_run_fused_export(jobs, expected):
    job = jobs["memrec_fused"]
    assert job.returncode == 0, job.stderr[-3000:]
    np.testing.assert_allclose(np.load(jobs["work"] / "memrec_fused" / "output_0.npy"),
                               expected, atol=TOL, rtol=0)


def test_memrec_saved_model_cli_names_the_fix_without_the_library(exports, monkeypatch,
                                                                 capsys):
    from tensorflow.python.tools import saved_model_cli as stock

    from memrec_tf.app import saved_model_cli

    def stock_main():
        assert sys.argv == ["saved_model_cli", "show", "--dir", exports["fused"], "--all"]
        raise tf.errors.NotFoundError(None, None, _BARE)

    monkeypatch.setattr(ops, "is_available", lambda: (False, "expected /x/missing.so"))
    monkeypatch.setattr(stock, "main", stock_main)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    assert saved_model_cli.main(["show", "--dir", exports["fused"], "--all"]) == 1
    err = capsys.readouterr().err
    assert "MemRecLookup" in err
    assert "import memrec_tf; memrec_tf.load(path)" in err
    assert "re-export with mode='core'" in err
    assert "missing.so" in err  # why the library did not load


@pytest.mark.slow
@pytest.mark.skipif(not _TF_KERAS_AVAILABLE, reason="tf-keras is not installed")
@pytest.mark.skipif(current_keras_mode() == "tf_keras", reason="already running under tf-keras")
def test_tf_keras_model_exports_in_both_modes(jobs):
    job = jobs["tfk"]
    assert job.returncode == 0, job.stderr[-3000:]
    assert "OK" in job.stdout


# -------------------------------------------------------------------- load()


def test_explain_load_error_names_the_fix(exports):
    message = export_lib.explain_load_error(RuntimeError(_BARE), exports["fused"])
    assert "MemRecLookup" in message
    assert export_lib.LOAD_FIX in message
    assert f"memrec_tf {memrec_tf.__version__}" in message
    assert _BARE in message
    assert export_lib.explain_load_error(ValueError("something else")) is None


def test_load_reraises_with_the_fix_when_the_library_is_missing(exports, monkeypatch):
    def no_library():
        raise ops.OpLibraryError("the memrec_tf op library is missing: expected /x.so")

    def bare_loader(path):
        raise RuntimeError(_BARE)

    monkeypatch.setattr(ops, "load_library", no_library)
    monkeypatch.setattr(tf.saved_model, "load", bare_loader)
    with pytest.raises(RuntimeError) as info:
        export_lib.load(exports["fused"])
    text = str(info.value)
    assert export_lib.LOAD_FIX in text and "expected /x.so" in text and _BARE in text


def test_load_of_core_export_needs_no_library(exports, batch, expected, monkeypatch):
    def no_library():
        raise ops.OpLibraryError("missing")

    monkeypatch.setattr(ops, "load_library", no_library)
    np.testing.assert_allclose(_serve(export_lib.load(exports["core"]), ids=batch),
                               expected, atol=TOL, rtol=0)


# ---------------------------------------------------------------- bad cases


def test_unknown_mode_and_non_models(ctr, tmp_path):
    with pytest.raises(ValueError, match="mode must be one of"):
        export_lib.export(ctr, str(tmp_path / "m"), mode="xla")
    with pytest.raises(TypeError, match="Keras 3 or tf-keras Model, got MemRecEmbedding"):
        export_lib.export(ctr.get_layer("emb"), str(tmp_path / "m"))


class _Tower(keras.Model):
    """A subclassed model: its inputs are known only after a call."""

    def __init__(self):
        super().__init__(name="tower")
        self.emb = MemRecEmbedding(4, 64, combiner="mean")
        self.out = keras.layers.Dense(1)

    def call(self, ids):
        return self.out(self.emb(ids))


def test_unbuilt_model_is_refused(tmp_path):
    sequential = keras.Sequential([MemRecEmbedding(4, 64), keras.layers.Dense(1)])
    for model in (sequential, _Tower()):
        with pytest.raises(ValueError, match="not been built"):
            export_lib.export(model, str(tmp_path / "m"))
    assert os.listdir(tmp_path) == []


def test_subclassed_model_after_a_call(tmp_path):
    model = _Tower()
    ids = np.array([[1, 2, 3], [4, 5, 6]], np.int64)
    want = model(tf.constant(ids)).numpy()
    if current_keras_mode() == "keras3":  # Keras 3 records no input dtypes
        with pytest.raises(ValueError, match="Pass signature="):
            export_lib.export(model, str(tmp_path / "m"))
    path = export_lib.export(model, str(tmp_path / "m"), mode="fused",
                             signature=[tf.TensorSpec([None, 3], tf.int64, name="ids")])
    np.testing.assert_allclose(_serve(export_lib.load(path), ids=ids), want, atol=TOL, rtol=0)


def test_explicit_signature_names_the_input(ctr, batch, expected, tmp_path):
    path = export_lib.export(ctr, str(tmp_path / "m"),
                             signature=[tf.TensorSpec([None, 4], tf.int64, name="user_ids")])
    loaded = export_lib.load(path)
    _, inputs = loaded.signatures["serving_default"].structured_input_signature
    assert list(inputs) == ["user_ids"]
    np.testing.assert_allclose(_serve(loaded, user_ids=batch), expected, atol=TOL, rtol=0)


def test_existing_path_is_refused_then_overwritten(ctr, batch, expected, tmp_path):
    path = str(tmp_path / "m")
    export_lib.export(ctr, path)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_lib.export(ctr, path)
    other = _ctr_model(seed=11)
    want = other.predict(batch, verbose=0)
    assert not np.allclose(want, expected, atol=TOL)
    export_lib.export(other, path, overwrite=True)
    np.testing.assert_allclose(_serve(export_lib.load(path), ids=batch), want,
                               atol=TOL, rtol=0)
    assert os.listdir(tmp_path) == ["m"]  # no scratch directories left beside it


def _tree(path):
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = f.read()
    return out


def test_failure_midway_keeps_the_old_model(ctr, batch, expected, tmp_path, monkeypatch):
    path = str(tmp_path / "m")
    export_lib.export(ctr, path)
    before = _tree(path)
    real_write = export_lib.writing.write_saved_model

    def write_then_fail(model, staged, specs, **options):
        real_write(model, staged, specs, **options)  # a complete model in the scratch dir ...
        with open(os.path.join(staged, "saved_model.pb"), "wb") as f:
            f.write(b"half")  # ... then a torn write
        raise OSError("device lost")

    monkeypatch.setattr(export_lib.writing, "write_saved_model", write_then_fail)
    with pytest.raises(OSError, match="device lost"):
        export_lib.export(_ctr_model(seed=11), path, overwrite=True)
    assert _tree(path) == before
    assert os.listdir(tmp_path) == ["m"]
    monkeypatch.undo()
    np.testing.assert_allclose(_serve(export_lib.load(path), ids=batch), expected,
                               atol=TOL, rtol=0)


def test_failed_swap_puts_the_old_model_back(ctr, tmp_path, monkeypatch):
    path = str(tmp_path / "m")
    export_lib.export(ctr, path)
    before = _tree(path)
    real_rename = os.rename

    def rename(src, dst):
        if os.path.basename(src) == "model":  # the staged export moving in
            raise OSError("rename failed")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="rename failed"):
        export_lib.export(ctr, path, overwrite=True)
    monkeypatch.undo()
    assert _tree(path) == before
    assert os.listdir(tmp_path) == ["m"]


@pytest.mark.parametrize("mode", export_lib.MODES)
def test_bad_requests_fail_clearly_and_serving_continues(loaded, batch, expected, mode):
    fn = loaded[mode].signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="int64.*int32"):
        fn(ids=tf.constant(batch.astype(np.int32)))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"Shape of tensor ids \[4\] is not compatible with expected "
                             r"shape \[\?,4\]"):
        fn(ids=tf.constant(batch[0]))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"Shape of tensor ids \[16,3\] is not compatible"):
        fn(ids=tf.constant(batch[:, :3]))
    np.testing.assert_allclose(_serve(loaded[mode], ids=batch), expected, atol=TOL, rtol=0)


@pytest.mark.parametrize("mode", export_lib.MODES)
def test_concurrent_calls_match_serial_calls_bitwise(loaded, mode):
    fn = loaded[mode].signatures["serving_default"]
    rng = np.random.default_rng(99)
    requests = [tf.constant(rng.integers(-1000, 1000, size=(1 + i % 5, 4), dtype=np.int64))
                for i in range(16)]
    serial = [fn(ids=r)["output_0"].numpy() for r in requests]
    mismatches, errors, calls = [], [], [0] * 16
    deadline = time.monotonic() + 2.0
    start = threading.Barrier(16)

    def worker(i):
        try:
            start.wait()
            while time.monotonic() < deadline:
                out = fn(ids=requests[i])["output_0"].numpy()
                calls[i] += 1
                if out.tobytes() != serial[i].tobytes():
                    mismatches.append(i)
        except Exception as e:  # pylint: disable=broad-except
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert not mismatches
    assert min(calls) >= 1
