"""Shared fixtures of the memrec_tf tests.

Keras mode: `memrec_tf.layer` binds `tf.keras` when it is first imported, so
one process tests one Keras. The default run uses Keras 3;
tests/test_layer.py::test_legacy_subprocess_runs_layer_suite_under_tf_keras
re-runs test_layer.py in a child process with TF_USE_LEGACY_KERAS=1, so a
plain `python -m pytest tests` covers both. The child can also be run by hand:

    TF_USE_LEGACY_KERAS=1 python -m pytest tests/test_layer.py -k "not legacy_subprocess"
"""
import gc
import os

# Quiet TensorFlow's C++ start-up logging; must precede the first import.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import memrec_tf  # noqa: E402,F401
from memrec_tf import layer as layer_lib  # noqa: E402
from memrec_tf import ops  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEGACY_ENV = "TF_USE_LEGACY_KERAS"


def current_keras_mode():
    """'tf_keras' or 'keras3': which Keras memrec_tf.layer actually bound."""
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
