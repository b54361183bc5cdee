"""Whether the tables' gradients are dense tensors or `tf.IndexedSlices`.

Both forms hold the same sums. The sparse form (each touched row once, rows
ascending) is what sparse-aware optimizers want for large tables. For a
small table most rows are touched every step, and Keras 3's optimizers
densify an `IndexedSlices` gradient anyway (once per use: Adam twice), so a
dense gradient, written straight into a table-sized tensor, makes the whole
training step cheaper. "auto" (the default) chooses dense for tables of at
most `DENSE_GRADIENT_MAX_BYTES` on machines without a GPU (the dense kernel
is CPU only).

    with memrec_tf.ops.gradient_format("sparse"):
        grads = tape.gradient(loss, layer.trainable_variables)

The format is read when the gradient is built: under `tf.function`, when the
function is traced.
"""
import contextlib
import threading

import tensorflow as tf

FORMATS = ("auto", "dense", "sparse")
# Token + weight table bytes up to which "auto" returns dense gradients.
# A 2^16 x 64 float32 token table is 16 MiB.
DENSE_GRADIENT_MAX_BYTES = 64 << 20

_state = threading.local()


def current():
    """The format in effect in this thread: "auto", "dense" or "sparse"."""
    return getattr(_state, "format", "auto")


@contextlib.contextmanager
def gradient_format(name):
    """Context manager: the tables' gradients built inside are `name`.

    Args:
      name: "auto", "dense" or "sparse".

    Raises:
      ValueError: another name.
    """
    if name not in FORMATS:
        raise ValueError(f"gradient format must be one of {FORMATS}, got {name!r}")
    previous = current()
    _state.format = name
    try:
        yield
    finally:
        _state.format = previous


def use_dense(*tables):
    """True when the gradients of `tables` (the token and weight table) are dense."""
    chosen = current()
    if chosen != "auto":
        return chosen == "dense"
    if any(t.shape.rank != 2 or not t.shape.is_fully_defined() for t in tables):
        return False
    size = sum(t.shape.num_elements() * t.dtype.size for t in tables)
    return size <= DENSE_GRADIENT_MAX_BYTES and not tf.config.list_logical_devices("GPU")
