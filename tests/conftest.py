"""Shared fixtures and helpers of the memrec_tf tests.

The tests mirror the package: tests/ops, tests/layers, tests/models,
tests/data, tests/app and tests/saved_model; tests/test_features.py and
tests/test_examples.py test the modules at the top. Test files import
`reference` (tests/reference.py) and this file's helpers as top-level
modules: this folder is on sys.path once pytest has loaded this file.
Test file names are unique across the folders (there are no __init__.py
files, so pytest imports each file by its base name).

Markers (pyproject.toml): `slow` for tests that take more than a few
seconds, start child processes or several workers; `make test-fast` runs
`pytest -m "not slow"`, `make test` runs everything. `data` marks the tests
of the shared data sets (skipped when ../shared/data is absent).

Keras mode: `memrec_tf.layers.memrec_embedding` binds `tf.keras` when it is
first imported, so one process tests one Keras. The default run uses Keras 3;
tests/layers/test_memrec_embedding.py::test_legacy_subprocess_runs_layer_suite_under_tf_keras
re-runs that file in a child process with TF_USE_LEGACY_KERAS=1, so a plain
`python -m pytest tests` covers both. The child can also be run by hand:

    TF_USE_LEGACY_KERAS=1 python -m pytest tests/layers/test_memrec_embedding.py \
        -k "not legacy_subprocess"
"""
import gc
import os
from pathlib import Path

# Quiet TensorFlow's C++ start-up logging; must precede the first import.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import memrec_tf  # noqa: E402,F401
from memrec_tf.layers import memrec_embedding as layer_lib  # noqa: E402
from memrec_tf import ops  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEGACY_ENV = "TF_USE_LEGACY_KERAS"


def shared_data_dir() -> Path:
    """The shared data sets: $MEMREC_DATA_DIR, else ../shared/data beside the repository."""
    env = os.environ.get("MEMREC_DATA_DIR")
    return Path(env) if env else Path(REPO_ROOT).parent / "shared" / "data"


def shared_data_file(*parts) -> Path:
    """A file or folder of the shared data; skips the test when it is absent."""
    path = shared_data_dir().joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not found at {path} (set MEMREC_DATA_DIR)")
    return path


def current_keras_mode():
    """'tf_keras' or 'keras3': the Keras that memrec_tf.layers.memrec_embedding bound."""
    module = layer_lib.keras.layers.Layer.__module__
    return "tf_keras" if module.startswith("tf_keras") else "keras3"


def pytest_report_header(config):
    return f"memrec_tf keras mode: {current_keras_mode()} ({LEGACY_ENV}={os.environ.get(LEGACY_ENV)})"


def pytest_unconfigure(config):
    # Free the tf.data iterators that tests' exceptions held while TensorFlow's
    # threads can still take the GIL; freed at interpreter exit, one whose
    # prefetch thread is inside a Python generator hangs the process.
    gc.collect()


@pytest.fixture(scope="session")
def keras_mode():
    return current_keras_mode()


@pytest.fixture(scope="session")
def keras():
    """The Keras that MemRecEmbedding is built on (Keras 3 or tf-keras)."""
    return layer_lib.keras


@pytest.fixture(scope="session")
def lib():
    """The loaded op module; the raw ops are called through it."""
    available, reason = ops.is_available()
    if not available:
        pytest.fail(f"the fused op library does not load: {reason}")
    return ops.load_library()


@pytest.fixture
def rng():
    return np.random.default_rng(20240611)


@pytest.fixture
def mixed_float16(keras):
    """Sets the global 'mixed_float16' policy for one test, and restores it."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


@pytest.fixture(params=["CPU", "GPU"])
def device(request):
    """Device string for `tf.device`; the GPU case skips where it cannot run.

    The GPU case needs a visible GPU and an op library built with its CUDA
    kernels: without them TensorFlow would silently place the fused op on the
    CPU and the case would test nothing new.
    """
    if request.param == "GPU":
        if not tf.config.list_physical_devices("GPU"):
            pytest.skip("no GPU visible to TensorFlow")
        if (ops.build_info() or {}).get("cuda") != "1":
            pytest.skip("the op library was built without CUDA kernels")
    return f"/{request.param}:0"
