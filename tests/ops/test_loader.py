"""The op-library loader against libraries that cannot work here.

Each broken library is tried in a fresh child process with
MEMREC_TF_OPS_LIBRARY pointing at it (the loader caches its first result,
and a bad dlopen must not take pytest down). The child reports, as JSON:

- what `memrec_tf.ops.load_library()` raised and its message, and whether
  `tf.load_op_library` was even called;
- the RuntimeWarnings and outputs of `MemRecEmbedding(implementation="auto")`
  (two layers, several calls), which must fall back to the core path;
- what `implementation="fused"` raised.

The libraries of LOAD_ONLY_CASES are only loaded, all in one more child
(LOAD_CHILD), which reports the same first two items for each.

The children run concurrently; this file takes about as long as one of them.
"""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from memrec_tf import MemRecEmbedding, ops

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
REBUILD = "pip install --no-build-isolation -e ."
# What a child prints for the class it caught: the public memrec_tf.ops.OpLibraryError
# (defined in memrec_tf.ops.fused), by the module that defines it.
OP_LIBRARY_ERROR = f"{ops.OpLibraryError.__module__}.{ops.OpLibraryError.__name__}"
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


# Counts the dlopen calls of a child process (tf.load_op_library).
COUNTING_LOAD = textwrap.dedent('''
    import json, os, sys, warnings
    import tensorflow as tf
    calls = []
    _load = tf.load_op_library
    def counting_load(path):
        calls.append(path)
        return _load(path)
    tf.load_op_library = counting_load
''')

CHILD = COUNTING_LOAD + textwrap.dedent('''
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


# Loads each library of argv[1] ({case: path}) in turn. It calls ops._load,
# which load_library caches, so that one TensorFlow import serves them all;
# the one library that loads must come last.
LOAD_CHILD = COUNTING_LOAD + textwrap.dedent('''
    from memrec_tf.ops import fused as ops
    reports = {}
    for case, path in json.loads(sys.argv[1]).items():
        os.environ[ops.LIBRARY_ENV] = path
        del calls[:]
        try:
            ops._load()
            report = {"load": "ok"}
        except Exception as e:  # the class is what is checked
            report = {"load": type(e).__module__ + "." + type(e).__name__, "message": str(e)}
        report["load_op_library_calls"] = len(calls)
        reports[case] = report
    print("REPORT " + json.dumps(reports), flush=True)
''')


def _real_library():
    return ops.library_path()


def _checksum_file(library):
    return library + ops.CHECKSUM_SUFFIX


def _text_section(image):
    """(offset, size) of the .text section of the 64-bit ELF `image`."""
    def field(offset, size):
        return int.from_bytes(image[offset:offset + size], "little")

    # e_shoff, e_shentsize, e_shnum, e_shstrndx; then sh_name, sh_offset and
    # sh_size of each section header.
    shoff, shentsize = field(0x28, 8), field(0x3A, 2)
    sections = [shoff + i * shentsize for i in range(field(0x3C, 2))]
    names = field(sections[field(0x3E, 2)] + 24, 8)
    for header in sections:
        name = names + field(header, 4)
        if image[name:name + 6] == b".text\0":
            return field(header + 24, 8), field(header + 32, 8)
    raise AssertionError("the library has no .text section")


def _other_version(version):
    """A version string of the same length that differs from `version`."""
    for digit in "98":
        other = "".join(digit if ch.isdigit() else ch for ch in version)
        if other != version:
            return other
    raise AssertionError(version)


def _make_libraries(root):
    """{case: path} of the libraries under `root` (all broken but intact_copy)."""
    real = open(_real_library(), "rb").read()
    real_checksum = open(_checksum_file(_real_library())).read()
    tag = f"tensorflow={tf.__version__};".encode()
    assert real.count(tag) == 1, "the built library carries no build tag for this TensorFlow"
    full_tag = b"\0MEMREC_BUILD_TAG[" + tag + b"cuda=0;sanitized=0]\0"
    paths = {}

    def write(name, data, checksum="own"):
        """checksum: "own" (that of `data`, as a build writes it), None or the text."""
        path = os.path.join(root, name, "_memrec_ops.so")
        os.makedirs(os.path.dirname(path))
        with open(path, "wb") as f:
            f.write(data)
        if checksum == "own":
            checksum = f"{hashlib.sha256(data).hexdigest()}  _memrec_ops.so\n"
        if checksum is not None:
            with open(_checksum_file(path), "w") as f:
                f.write(checksum)
        paths[name] = path

    # As a build for another TensorFlow, checksum and all.
    write("other_tf_version", real.replace(
        tag, f"tensorflow={_other_version(tf.__version__)};".encode()))
    rng = np.random.default_rng(0)
    write("random_bytes", rng.integers(0, 256, 65536, dtype=np.uint8).tobytes())
    # The right tag and checksum in a file that is no ELF: its first bytes
    # refuse it, whatever its tag says.
    write("not_elf_right_tag",
          rng.integers(0, 256, 4096, dtype=np.uint8).tobytes() + full_tag)
    paths["missing"] = os.path.join(root, "missing", "_memrec_ops.so")
    # One byte of machine code flipped after the build: the tag, the size and
    # the ELF structure are intact, only the checksum tells.
    text_offset, text_size = _text_section(real)
    flipped = bytearray(real)
    flipped[text_offset + text_size // 2] ^= 0xFF
    assert flipped.count(tag) == 1 and len(flipped) == len(real)
    write("flipped_code_byte", bytes(flipped), checksum=real_checksum)
    write("empty", b"")
    write("no_checksum", real, checksum=None)
    write("malformed_checksum", real, checksum="not a digest  _memrec_ops.so\n")
    # An ELF file of the wrong class, with the right tag and checksum: gets
    # past every check of the loader, so the dlopen failure itself must
    # become an OpLibraryError.
    elf32 = bytearray(4096)
    elf32[:7] = b"\x7fELF\x01\x01\x01"  # ELFCLASS32, little-endian, version 1
    write("elf32_right_tag", bytes(elf32) + full_tag)
    write("intact_copy", real, checksum=real_checksum)
    return paths


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """{case: (child report, child stderr)}, from concurrent child processes."""
    root = str(tmp_path_factory.mktemp("libraries"))
    paths = _make_libraries(root)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=os.pathsep.join(
        [HERE, REPO_ROOT] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    children = {}
    for name in CASES:
        children[name] = subprocess.Popen(
            [sys.executable, "-c", CHILD], cwd=REPO_ROOT, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=dict(env, **{ops.LIBRARY_ENV: paths[name]}))
    load_only = {name: paths[name] for name in LOAD_ONLY_CASES}
    children["load_only"] = subprocess.Popen(
        [sys.executable, "-c", LOAD_CHILD, json.dumps(load_only)], cwd=REPO_ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    out = {}
    for name, child in children.items():
        stdout, stderr = child.communicate(timeout=TIMEOUT_S)
        lines = [x for x in stdout.splitlines() if x.startswith("REPORT ")]
        assert child.returncode == 0 and lines, (
            f"{name}: the child exited with {child.returncode}\n{stdout[-3000:]}\n{stderr[-5000:]}")
        report = json.loads(lines[-1][len("REPORT "):])
        if name == "load_only":
            out.update({case: (report[case], stderr, path) for case, path in load_only.items()})
        else:
            out[name] = (report, stderr, paths[name])
    shutil.rmtree(root, ignore_errors=True)
    return out


@pytest.fixture(scope="module")
def expected_outputs():
    """The fixed layer's outputs on the core path, in this (normal) process."""
    return _run_layer("core")


# Broken libraries, each in a child of its own that also runs the layers.
CASES = ["other_tf_version", "random_bytes", "not_elf_right_tag", "missing",
         "flipped_code_byte"]
# Libraries that LOAD_CHILD only loads, in this order: all broken but the last.
LOAD_ONLY_CASES = ["empty", "no_checksum", "malformed_checksum", "elf32_right_tag",
                   "intact_copy"]
REFUSED = CASES + LOAD_ONLY_CASES[:-1]


def _expected_reason(case, path):
    """What the refusal of `case` must say is wrong with the file at `path`."""
    return {
        "other_tf_version": f"was built for TensorFlow {_other_version(tf.__version__)} ",
        "random_bytes": "is not an ELF shared library (it starts with bytes ",
        "not_elf_right_tag": "is not an ELF shared library (it starts with bytes ",
        "missing": "is missing",
        "flipped_code_byte": "does not match its checksum",
        "empty": "is empty (0 bytes)",
        "no_checksum": f"has no checksum file: expected {_checksum_file(path)}",
        "malformed_checksum": f"has a malformed checksum file {_checksum_file(path)}",
        "elf32_right_tag": "failed to load",
    }[case]


@pytest.mark.slow
@pytest.mark.parametrize("case", REFUSED)
def test_load_library_raises_op_library_error_with_the_fix(reports, case):
    report, stderr, path = reports[case]
    assert report["load"] == OP_LIBRARY_ERROR, report
    message = report["message"]
    assert path in message
    assert _expected_reason(case, path) in message, message
    assert tf.__version__ in message  # the running TensorFlow
    assert REBUILD in message
    # A file that is no whole library is named as such, not as one built for
    # an unknown TensorFlow; no raw dlopen failure leaks out as the error.
    assert "TensorFlow unknown" not in message
    assert "undefined symbol" not in message
    assert "Traceback" not in stderr, stderr[-3000:]


@pytest.mark.slow
def test_a_damaged_library_names_both_checksums(reports):
    message = reports["flipped_code_byte"][0]["message"]
    recorded = open(_checksum_file(_real_library())).read().split()[0]
    assert f"records {recorded}" in message
    assert re.search(r"its SHA-256 is [0-9a-f]{64} but", message), message


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in REFUSED if c != "elf32_right_tag"])
def test_a_library_that_cannot_fit_is_never_dlopened(reports, case):
    # The file is checked first: no dlopen, so no undefined-symbol crash from a
    # library built for another TensorFlow, and no damaged code ever runs.
    assert reports[case][0]["load_op_library_calls"] == 0


@pytest.mark.slow
def test_an_intact_copy_with_its_checksum_loads(reports):
    # $MEMREC_TF_OPS_LIBRARY's library is checked against the checksum file
    # beside it (which names the original file), not the package's.
    report = reports["intact_copy"][0]
    assert report["load"] == "ok", report
    assert report["load_op_library_calls"] == 1


def test_the_build_records_the_library_checksum():
    # custom_ops/build.py's line, in sha256sum's format.
    library = _real_library()
    digest = hashlib.sha256(open(library, "rb").read()).hexdigest()
    assert open(_checksum_file(library)).read() == f"{digest}  {os.path.basename(library)}\n"


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_fused_layer_raises_op_library_error(reports, case):
    assert reports[case][0]["fused"] == OP_LIBRARY_ERROR


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


@pytest.mark.slow
def test_a_truncated_library_raises_op_library_error(tmp_path):
    real = open(_real_library(), "rb").read()
    path = tmp_path / "_memrec_ops.so"
    # As an interrupted copy leaves it: everything up to a page past the tag.
    path.write_bytes(real[:real.index(b"MEMREC_BUILD_TAG[") + 4096])
    assert _load_in_child(str(path)) == (0, f"RAISED {OP_LIBRARY_ERROR}\n")


@pytest.mark.slow
def test_a_directory_raises_op_library_error(tmp_path):
    assert _load_in_child(str(tmp_path)) == (0, f"RAISED {OP_LIBRARY_ERROR}\n")


@pytest.mark.slow
def test_a_damaged_build_tag_raises_op_library_error(tmp_path):
    path = tmp_path / "_memrec_ops.so"
    real = open(_real_library(), "rb").read()
    tag = f"tensorflow={tf.__version__};".encode()
    path.write_bytes(real.replace(tag, tag.replace(b"=", b"?")))  # one flipped byte
    assert _load_in_child(str(path)) == (0, f"RAISED {OP_LIBRARY_ERROR}\n")


def test_op_library_error_is_one_public_class():
    import memrec_tf
    from memrec_tf.ops import fused

    assert memrec_tf.OpLibraryError is ops.OpLibraryError is fused.OpLibraryError
