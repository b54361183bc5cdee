"""Exports Keras models with MemRecEmbedding layers as SavedModels for serving.

    import memrec_tf.export
    memrec_tf.export(model, "/models/ctr/1", mode="core")
    loaded = memrec_tf.load("/models/ctr/1")
    loaded.signatures["serving_default"](ids=tf.constant([[1, 2, 3, 4]], tf.int64))

The `serving_default` signature takes the model's own Keras inputs (raw int
or string ids, dense float features), named after them, and runs the whole
model: hashing included, so a client never sees token rows.

Two modes:
  "core":  every MemRecEmbedding is traced through its built-in-ops path. The
           graph holds only TensorFlow ops (this is checked after writing), so
           a stock TensorFlow Serving, `saved_model_cli` or any TensorFlow
           process serves it.
  "fused": traced with the fused MemRecLookup op (faster). Whoever loads it
           must register the op first: `memrec_tf.load`, `python -m
           memrec_tf.app.saved_model_cli`, the C++ loader in serving/ with
           --op_library, or a TensorFlow Serving built with the op
           (serving/README.md).

Loading a fused export in a process that has not loaded the op library fails
inside TensorFlow's own loaders with the bare message "Op type not registered
'MemRecLookup' in binary running on ...": `tf.saved_model.load` raises it as
a RuntimeError, the TF1 loader behind the stock `saved_model_cli run` as a
NotFoundError while importing the graph (`saved_model_cli show --all` only
prints "could not be listed due to the existence of custom ops"), and the C++
`tensorflow::LoadSavedModel` loads the bundle and fails at the first
Session::Run. TensorFlow offers no hook to add a hint to that message.
The fix is to load memrec_tf first (import memrec_tf;
memrec_tf.load(path)) or to re-export with mode='core'.
`memrec_tf.load` and `python -m memrec_tf.app.saved_model_cli` re-raise
the error with that fix (`explain_load_error`), and every export carries
assets.extra/memrec_tf_export.json (mode, ops, versions, the fix), which
TensorFlow ignores and a person can read.

The export is written to a temporary directory beside the target and then
renamed into place, so a failed export never leaves a half-written model at
the target path. Replacing an existing model (overwrite=True) moves the old
one aside, renames the new one in and then deletes the old one: a reader
sees the old model, briefly no model, then the new one; never a mix.
"""
import json
import os
import re
import shutil
import tempfile

import tensorflow as tf

from memrec_tf import ops
from memrec_tf.layers.stored import memrec_layers, stored_tables
from memrec_tf.ops import quantize
from memrec_tf.saved_model import writing
from memrec_tf.saved_model.writing import SIGNATURE_KEY, forced_implementation

MODES = ("core", "fused")
INFO_DIR = "assets.extra"
INFO_FILE = "memrec_tf_export.json"
LOAD_FIX = ("load memrec_tf first (import memrec_tf; memrec_tf.load(path)) "
            "or re-export with mode='core'")
_UNREGISTERED = re.compile(r"Op type not registered '(MemRec\w*)'")


class ExportError(RuntimeError):
    """The written SavedModel does not hold the graph its mode promises."""


# ----------------------------------------------------------------- inspection


def saved_op_types(path):
    """Every op type in a SavedModel: its graphs and all their function defs.

    Args:
      path: a SavedModel directory.

    Returns:
      A set of op type names, e.g. {"MemRecLookup", "MatMul", ...}.
    """
    # pylint: disable-next=g-direct-tensorflow-import
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    found = set()
    for meta_graph in saved_model.meta_graphs:
        found.update(node.op for node in meta_graph.graph_def.node)
        for function in meta_graph.graph_def.library.function:
            found.update(node.op for node in function.node_def)
    return found


def memrec_op_types(path):
    """The memrec_tf op types (names starting with "MemRec") a SavedModel holds."""
    return {op for op in saved_op_types(path) if op.startswith("MemRec")}


def read_export_info(path):
    """The memrec_tf_export.json written beside an export, or None if absent."""
    try:
        with open(os.path.join(path, INFO_DIR, INFO_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _verify(path, mode, layers):
    found = memrec_op_types(path)
    if mode == "core" and found:
        raise ExportError(
            f"a mode='core' export still holds memrec_tf ops {sorted(found)}; a stock "
            "TensorFlow could not serve it. A layer in the model calls the fused op "
            "outside MemRecEmbedding's implementation switch.")
    if mode == "fused" and layers and not any(op.startswith("MemRecLookup") for op in found):
        raise ExportError(
            "a mode='fused' export holds no MemRecLookup op although the model has "
            f"MemRecEmbedding layers ({', '.join(layer.name for layer in layers)}).")
    return found


def _write_info(path, mode, table_dtype, model, found, specs):
    import memrec_tf  # pylint: disable=g-import-not-at-top

    def describe(spec):
        return {"dtype": spec.dtype.name, "shape": spec.shape.as_list()
                if spec.shape.rank is not None else None}

    inputs = {}
    for spec in tf.nest.flatten(specs, expand_composites=False):
        if isinstance(spec, tf.TensorSpec):
            inputs[spec.name or f"input_{len(inputs)}"] = describe(spec)
    info = {
        "format": 1,
        "mode": mode,
        "table_dtype": table_dtype,
        "memrec_ops": sorted(found),
        "memrec_tf_version": memrec_tf.__version__,
        "tensorflow_version": tf.__version__,
        "keras": "keras3" if writing.is_keras3(model) else "tf_keras",
        "signature": SIGNATURE_KEY,
        "inputs": inputs,
        "op_library": os.path.basename(ops.library_path()) if found else None,
        "load_hint": (LOAD_FIX if found else
                      "plain TensorFlow ops only: any TensorFlow or TensorFlow Serving loads it"),
    }
    os.makedirs(os.path.join(path, INFO_DIR), exist_ok=True)
    with open(os.path.join(path, INFO_DIR, INFO_FILE), "w") as f:
        json.dump(info, f, indent=2, sort_keys=True)
        f.write("\n")


def _move_into_place(new, target):
    """Renames `new` to `target`; an existing `target` moves to `new`.old.

    Both paths are in the same directory tree (one filesystem), so each
    rename is atomic. The caller deletes the scratch directory holding the
    old model.
    """
    if not os.path.lexists(target):
        os.rename(new, target)
        return
    old = new + ".old"
    os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old, target)
        raise

def export(model, path, mode="core", overwrite=False, signature=None, table_dtype="float32"):
    """Writes `model` as a SavedModel whose `serving_default` takes raw features.

    Args:
      model: a built Keras 3 or tf-keras Model: functional, Sequential, or a
        subclassed model that has been called (with Keras 3, also pass
        `signature`). Do not train or call it from another thread meanwhile:
        its MemRecEmbedding layers switch implementation while it is traced.
      path: the SavedModel directory to write. For TensorFlow Serving, a
        version directory such as /models/ctr/1.
      mode: "core" (built-in TensorFlow ops only; any TensorFlow serves it) or
        "fused" (the MemRecLookup op; the loader needs the op library).
      overwrite: replace an existing `path`. Without it an existing path is
        an error.
      signature: optional input signature: a list with one entry per
        positional argument of the model's call, each a tf.TensorSpec,
        keras.InputSpec or nested structure of them (as `input_signature` of
        Keras' `model.export`). Default: the model's own Keras inputs, named
        after them, with a dynamic batch dimension.
      table_dtype: how MemRecEmbedding token tables are stored: "float32" (as
        trained), "bfloat16", or "int8" with a float32 scale per row (about
        a quarter of the bytes; see `memrec_tf.ops.quantize`). Only the
        stored tables are written, and both modes read them as they are
        stored, accumulating in float32. Weight tables and every other layer
        stay as trained.

    Returns:
      The absolute path written.

    Raises:
      TypeError: `model` is not a Keras 3 or tf-keras Model.
      ValueError: an unknown mode or table_dtype, a model that has never been built or
        called, or a Keras 3 subclassed model without `signature` (Keras 3
        records no input dtypes for those).
      FileExistsError: `path` exists and overwrite is False.
      memrec_tf.OpLibraryError: mode="fused" without a loadable op library.
      ExportError: the written graph does not match the mode (then nothing is
        written at `path`).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    table_dtype = quantize.check_table_dtype(table_dtype)
    if not (writing.is_keras3(model) or writing.is_tf_keras(model)):
        raise TypeError(f"export needs a Keras 3 or tf-keras Model, got {type(model).__name__}")
    writing.check_built(model)
    target = os.path.abspath(os.fspath(path))
    if os.path.lexists(target) and not overwrite:
        raise FileExistsError(
            f"{target} already exists; pass overwrite=True to replace it")
    if mode == "fused":
        ops.load_library()  # raises OpLibraryError naming the fix
    layers = memrec_layers(model)
    specs = writing.input_specs(model, signature)

    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.export-", dir=parent)
    try:
        staged = os.path.join(scratch, "model")
        with forced_implementation(layers, mode), stored_tables(layers, table_dtype):
            writing.write_saved_model(model, staged, specs,
                                      only_used_variables=table_dtype != "float32")
        found = _verify(staged, mode, layers)
        _write_info(staged, mode, table_dtype, model, found, specs)
        _move_into_place(staged, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


# --------------------------------------------------------------------- load


def explain_load_error(error, path=None, library_error=None):
    """The message to show for a failed load of a memrec_tf export.

    Args:
      error: the exception TensorFlow raised while loading or running.
      path: the SavedModel directory, to name it and read its export info.
      library_error: why the op library did not load, if known.

    Returns:
      A message that names the missing op and the fix, followed by
      TensorFlow's own message; None when `error` is not about a missing
      memrec_tf op.
    """
    text = str(error)
    match = _UNREGISTERED.search(text)
    if not match:
        return None
    where = f" {path}" if path else ""
    lines = [f"memrec_tf: cannot load the SavedModel{where}: it holds the op "
             f"{match.group(1)} (a mode='fused' export), which this process has not "
             f"registered. Fix: {LOAD_FIX}."]
    info = read_export_info(path) if path else None
    if info:
        lines.append(f"It was exported by memrec_tf {info.get('memrec_tf_version')} with "
                     f"TensorFlow {info.get('tensorflow_version')} (mode="
                     f"{info.get('mode')!r}, ops {info.get('memrec_ops')}).")
    if library_error is not None:
        lines.append(f"The memrec_tf op library did not load in this process: {library_error}")
    lines.append(f"TensorFlow said: {text}")
    return "\n".join(lines)


def _with_message(error, message):
    if isinstance(error, tf.errors.OpError):
        return type(error)(error.node_def, error.op, message)
    try:
        return type(error)(message)
    except Exception:  # pylint: disable=broad-except
        return RuntimeError(message)


def load(path):
    """Loads an export (either mode) after registering the memrec_tf ops.

    A core export loads even where the op library is missing.

    Args:
      path: a SavedModel directory.

    Returns:
      The object `tf.saved_model.load` returns; `.signatures["serving_default"]`
      serves it.

    Raises:
      The loader's error, re-raised with the fix (see explain_load_error)
      when the export needs the op library and it could not be loaded.
    """
    path = os.fspath(path)
    library_error = None
    try:
        ops.load_library()
    except ops.OpLibraryError as e:
        library_error = e
    try:
        return tf.saved_model.load(path)
    except Exception as e:  # pylint: disable=broad-except
        message = explain_load_error(e, path, library_error)
        if message is None:
            raise
        raise _with_message(e, message) from e
