"""The op-library loader against libraries that cannot work here.

Each broken library is tried in a fresh child process with
MEMREC_TF_OPS_LIBRARY pointing at it (the loader caches its first result,
and a bad dlopen must not take pytest down). The child reports, as JSON:

- what `memrec_tf.ops.load_library()` raised and its message, and whether
  `tf.load_op_library` was even called;
- the RuntimeWarnings and outputs of `MemRecEmbedding(implementation="auto")`
  (two layers, several calls), which must fall back to the core path;
- what `implementation="fused"` raised.

The children run concurrently; this file takes about as long as one of them.
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from memrec_tf import MemRecEmbedding, ops

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
REBUILD = "pip install --no-build-isolation -e ."
TIMEOUT_S = 300

# The layer every child builds: settings, table values and inputs are fixed so
# the parent can compute the expected outputs itself.
LAYER = dict(output_dim=4, num_token_rows=50, num_hashes=2, num_weight_rows=11,
             num_weight_hashes=2, combiner="mean", seed=7)
IDS = [[3, 9, -1], [2**62, 0, 7], [5, 5, 5]]
RAGGED_IDS = [[1, 2], [], [-(2**63), 2**63 - 1, 4]]
RAGGED_WEIGHTS = [[0.5, 2.0], [], [1.0, -1.0, 3.0]]


def _tables():
    rng = np.random.default_rng(3)
    return (rng.uniform(-1, 1, [LAYER["num_token_rows"], LAYER["output_dim"]]).astype(np.float32),
            rng.uniform(0.2, 1.5, [LAYER["num_weight_rows"], 1]).astype(np.float32))


def _run_layer(implementation):
    """Outputs of the fixed layer on the fixed inputs (dense, ragged, ragged weighted)."""
    layer = MemRecEmbedding(implementation=implementation, **LAYER)
    layer.build((None, 3))
    token, weight = _tables()
    layer.token_table.assign(token)
    layer.weight_table.assign(weight)
    ragged = tf.ragged.constant(RAGGED_IDS, tf.int64)
    weights = tf.ragged.constant(RAGGED_WEIGHTS, tf.float32)
    return [np.asarray(layer(tf.constant(IDS, tf.int64))).tolist(),
            np.asarray(layer(ragged)).tolist(),
            np.asarray(layer(ragged, weights=weights)).tolist()]


CHILD = textwrap.dedent('''
    import json, sys, warnings
    import tensorflow as tf
    calls = []
    _load = tf.load_op_library
    def counting_load(path):
        calls.append(path)
        return _load(path)
    tf.load_op_library = counting_load
    import memrec_tf
    from memrec_tf import ops
    import test_loader
    report = {}
    try:
        ops.load_library()
        report["load"] = "ok"
    except Exception as e:  # the class is what is checked
        report["load"] = type(e).__module__ + "." + type(e).__name__
        report["message"] = str(e)
    report["load_op_library_calls"] = len(calls)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report["auto"] = test_loader._run_layer("auto")
        report["auto_again"] = test_loader._run_layer("auto")  # a second layer
    report["warnings"] = [(w.category.__name__, str(w.message)) for w in caught
                          if issubclass(w.category, RuntimeWarning)]
    try:
        test_loader._run_layer("fused")
        report["fused"] = "ok"
    except Exception as e:
        report["fused"] = type(e).__module__ + "." + type(e).__name__
    print("REPORT " + json.dumps(report), flush=True)
''')


def _real_library():
    return ops.library_path()


def _other_version(version):
    """A version string of the same length that differs from `version`."""
    for digit in "98":
        other = "".join(digit if ch.isdigit() else ch for ch in version)
        if other != version:
            return other
    raise AssertionError(version)


def _make_libraries(root):
    """{case: path} of the broken libraries under `root`."""
    real = open(_real_library(), "rb").read()
    tag = f"tensorflow={tf.__version__};".encode()
    assert real.count(tag) == 1, "the built library carries no build tag for this TensorFlow"
    paths = {}

    def write(name, data):
        path = os.path.join(root, name, "_memrec_ops.so")
        os.makedirs(os.path.dirname(path))
        with open(path, "wb") as f:
            f.write(data)
        paths[name] = path

    write("other_tf_version", real.replace(
        tag, f"tensorflow={_other_version(tf.__version__)};".encode()))
    rng = np.random.default_rng(0)
    write("random_bytes", rng.integers(0, 256, 65536, dtype=np.uint8).tobytes())
    # The right tag in a file that is no ELF: gets past the version check, so
    # the dlopen failure itself must become an OpLibraryError.
    write("not_elf_right_tag", rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
          + b"\0MEMREC_BUILD_TAG[" + tag + b"cuda=0;sanitized=0]\0")
    paths["missing"] = os.path.join(root, "missing", "_memrec_ops.so")
    return paths


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """{case: (child report, child stderr)}, from concurrent child processes."""
    root = str(tmp_path_factory.mktemp("libraries"))
    paths = _make_libraries(root)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=os.pathsep.join(
        [HERE, REPO_ROOT] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    children = {}
    for name, path in paths.items():
        children[name] = subprocess.Popen(
            [sys.executable, "-c", CHILD], cwd=REPO_ROOT, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=dict(env, **{ops.LIBRARY_ENV: path}))
    out = {}
    for name, child in children.items():
        stdout, stderr = child.communicate(timeout=TIMEOUT_S)
        lines = [x for x in stdout.splitlines() if x.startswith("REPORT ")]
        assert child.returncode == 0 and lines, (
            f"{name}: the child exited with {child.returncode}\n{stdout[-3000:]}\n{stderr[-5000:]}")
        out[name] = (json.loads(lines[-1][len("REPORT "):]), stderr, paths[name])
    shutil.rmtree(root, ignore_errors=True)
    return out


@pytest.fixture(scope="module")
def expected_outputs():
    """The fixed layer's outputs on the core path, in this (normal) process."""
    return _run_layer("core")


CASES = ["other_tf_version", "random_bytes", "not_elf_right_tag", "missing"]


@pytest.mark.parametrize("case", CASES)
def test_load_library_raises_op_library_error_with_the_fix(reports, case):
    report, stderr, path = reports[case]
    assert report["load"] == "memrec_tf.ops.OpLibraryError", report
    message = report["message"]
    assert path in message
    assert tf.__version__ in message  # the running TensorFlow
    assert REBUILD in message
    built_for = {"other_tf_version": _other_version(tf.__version__),
                 "random_bytes": "unknown"}.get(case)
    if built_for:  # the version the library was built for
        assert f"built for TensorFlow {built_for}" in message
    if case == "missing":
        assert "missing" in message
    # No raw dlopen failure leaks out as the error itself.
    assert "undefined symbol" not in message
    assert "Traceback" not in stderr, stderr[-3000:]


@pytest.mark.parametrize("case", ["other_tf_version", "random_bytes", "missing"])
def test_a_library_that_cannot_fit_is_never_dlopened(reports, case):
    # The tag (or its absence) is read from the file first: no dlopen, so no
    # undefined-symbol crash from a library built for another TensorFlow.
    assert reports[case][0]["load_op_library_calls"] == 0


@pytest.mark.parametrize("case", CASES)
def test_auto_layer_falls_back_to_core_with_one_warning(reports, expected_outputs, case):
    report = reports[case][0]
    memrec_warnings = [m for category, m in report["warnings"] if m.startswith("memrec_tf:")]
    assert len(memrec_warnings) == 1, report["warnings"]
    assert len(report["warnings"]) == 1, report["warnings"]  # and no other RuntimeWarning
    assert "built-in-ops path" in memrec_warnings[0]
    assert REBUILD in memrec_warnings[0]  # the reason carries the fix
    for outputs in (report["auto"], report["auto_again"]):
        for got, want in zip(outputs, expected_outputs):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", CASES)
def test_fused_layer_raises_op_library_error(reports, case):
    assert reports[case][0]["fused"] == "memrec_tf.ops.OpLibraryError"


def test_core_outputs_match_the_fused_layer_here(expected_outputs):
    # The expected outputs are the right ones: the working fused op agrees.
    if not ops.is_available()[0]:
        pytest.skip("the fused op library does not load in this process")
    for got, want in zip(_run_layer("fused"), expected_outputs):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


# --------------------------------------------- paths the loader does not handle

def _load_in_child(path):
    """(exit status, stdout) of a child that loads the library at `path`."""
    code = ("from memrec_tf import ops\n"
            "try:\n    ops.load_library()\n"
            "except Exception as e:\n    print('RAISED', type(e).__module__ + '.' + type(e).__name__)\n")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **{ops.LIBRARY_ENV: path})
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    return proc.returncode, proc.stdout


def test_a_truncated_library_raises_op_library_error(tmp_path):
    real = open(_real_library(), "rb").read()
    path = tmp_path / "_memrec_ops.so"
    # As an interrupted copy leaves it: everything up to a page past the tag.
    path.write_bytes(real[:real.index(b"MEMREC_BUILD_TAG[") + 4096])
    assert _load_in_child(str(path)) == (0, "RAISED memrec_tf.ops.OpLibraryError\n")


def test_a_directory_raises_op_library_error(tmp_path):
    assert _load_in_child(str(tmp_path)) == (0, "RAISED memrec_tf.ops.OpLibraryError\n")


def test_a_damaged_build_tag_raises_op_library_error(tmp_path):
    path = tmp_path / "_memrec_ops.so"
    real = open(_real_library(), "rb").read()
    tag = f"tensorflow={tf.__version__};".encode()
    path.write_bytes(real.replace(tag, tag.replace(b"=", b"?")))  # one flipped byte
    assert _load_in_child(str(path)) == (0, "RAISED memrec_tf.ops.OpLibraryError\n")
