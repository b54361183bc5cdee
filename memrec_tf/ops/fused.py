"""The fused MEM-REC ops: loading the op library, wrappers and gradients.

The library is loaded lazily, on first use, through `tf.load_op_library`.
Before loading, the TensorFlow version it was built for is read from the
file itself, so that a mismatch gives a message naming both versions and the
command that rebuilds it, instead of an undefined-symbol traceback; and the
file is checked against the SHA-256 that the build recorded beside it, so
that a damaged library is refused instead of crashing the process.
"""
import hashlib
import importlib.machinery
import os
import re
import threading

import tensorflow as tf

from memrec_tf.ops import table_gradients
from memrec_tf.ops import signature as sig_lib

# The library lives in the package folder, beside memrec_tf/__init__.py.
_HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY_ENV = "MEMREC_TF_OPS_LIBRARY"
REBUILD_COMMAND = "pip install --no-build-isolation -e .  (in the memrec_tf source tree)"
_TAG = re.compile(rb"MEMREC_BUILD_TAG\[([^\]]*)\]")
# custom_ops/build.py writes the library's SHA-256 to `<library>` + this.
CHECKSUM_SUFFIX = ".sha256"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_ELF_MAGIC = b"\x7fELF"

_lock = threading.Lock()
_library = None
_error = None


class OpLibraryError(RuntimeError):
    """The compiled op library is missing, damaged or does not fit this TensorFlow."""


def library_path():
    """Path of the op library: $MEMREC_TF_OPS_LIBRARY, else the package's own."""
    override = os.environ.get(LIBRARY_ENV)
    if override:
        return override
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(_HERE, "_memrec_ops" + suffix)
        if os.path.exists(path):
            return path
    return os.path.join(_HERE, "_memrec_ops" + importlib.machinery.EXTENSION_SUFFIXES[0])


def build_info(path=None):
    """What the library at `path` was built for, read from its bytes.

    Returns a dict such as {"tensorflow": "2.21.0", "cuda": "0",
    "sanitized": "0"}, or None when the file carries no build tag.
    """
    with open(path or library_path(), "rb") as f:
        match = _TAG.search(f.read())
    if not match:
        return None
    # A damaged tag reads as missing fields, not as an exception.
    items = match.group(1).decode("ascii", "replace").split(";")
    return dict(item.split("=", 1) for item in items if "=" in item)


def _truncation(path):
    """Why the ELF file at `path` is cut short, or None.

    dlopen maps every PT_LOAD segment without checking it against the file
    size, so a truncated library (an interrupted copy) dies with SIGBUS
    instead of failing to load. Only 64-bit little-endian ELF is checked;
    anything else is left to dlopen, which rejects it cleanly.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        header = f.read(64)
        if len(header) < 64 or header[:6] != b"\x7fELF\x02\x01":
            return None
        phoff = int.from_bytes(header[0x20:0x28], "little")
        phentsize = int.from_bytes(header[0x36:0x38], "little")
        phnum = int.from_bytes(header[0x38:0x3A], "little")
        if phoff + phentsize * phnum > size:
            return f"its program headers end past its {size} bytes"
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    for i in range(phnum):
        entry = table[i * phentsize:(i + 1) * phentsize]
        if int.from_bytes(entry[0:4], "little") != 1:  # PT_LOAD
            continue
        end = int.from_bytes(entry[8:16], "little") + int.from_bytes(entry[32:40], "little")
        if end > size:
            return f"a segment ends at byte {end} but the file has {size} bytes"
    return None


def _damage(path):
    """Why the file at `path` cannot be a whole shared library, or None.

    Without this an empty or non-ELF file reads as a library built for
    TensorFlow "unknown" (it has no build tag), and a truncated one dies with
    SIGBUS inside dlopen.
    """
    size = os.path.getsize(path)
    if size == 0:
        return "is empty (0 bytes)"
    with open(path, "rb") as f:
        magic = f.read(len(_ELF_MAGIC))
    if magic != _ELF_MAGIC:
        return (f"is not an ELF shared library (it starts with bytes {magic.hex(' ')}, "
                f"not {_ELF_MAGIC.hex(' ')})")
    if size < 64:
        return f"is truncated (its {size} bytes end inside the ELF header)"
    truncated = _truncation(path)
    return f"is truncated ({truncated})" if truncated else None


def _checksum_mismatch(path):
    """Why the library at `path` fails its build-time checksum, or None.

    custom_ops/build.py records the SHA-256 of every library it links in
    `<library>.sha256`. A library damaged since (a flipped bit on disk, a
    bad copy) may keep its build tag and ELF structure intact, load, and
    crash on first use; only its checksum tells.
    """
    checksum_file = path + CHECKSUM_SUFFIX
    try:
        with open(checksum_file, encoding="ascii", errors="replace") as f:
            fields = f.read(4096).split()
    except FileNotFoundError:
        return (f"has no checksum file: expected {checksum_file}, which the build "
                "writes beside the library")
    recorded = fields[0].lower() if fields else ""
    if not _SHA256_HEX.fullmatch(recorded):
        return (f"has a malformed checksum file {checksum_file} (it does not start "
                "with a SHA-256 hex digest)")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != recorded:
        return (f"does not match its checksum: its SHA-256 is {digest.hexdigest()} but "
                f"{checksum_file} records {recorded}, so the file was damaged or "
                "changed after it was built")
    return None


def _load():
    path = library_path()
    if not os.path.isfile(path):
        what = "is not a file" if os.path.exists(path) else "is missing"
        raise OpLibraryError(
            f"the memrec_tf op library {what}: expected {path}. Build it with "
            f"TensorFlow {tf.__version__} installed: {REBUILD_COMMAND}")
    try:
        damage = _damage(path)
        info = build_info(path) or {}
        mismatch = _checksum_mismatch(path)
    except OSError as e:
        raise OpLibraryError(
            f"the memrec_tf op library {path} cannot be read: {e}. Rebuild it: "
            f"{REBUILD_COMMAND}") from e
    if damage:
        raise OpLibraryError(
            f"the memrec_tf op library {path} {damage}. Rebuild it with TensorFlow "
            f"{tf.__version__} installed: {REBUILD_COMMAND}")
    built_for = info.get("tensorflow", "unknown")
    if built_for != tf.__version__:
        raise OpLibraryError(
            f"the memrec_tf op library {path} was built for TensorFlow {built_for} "
            f"but TensorFlow {tf.__version__} is running. Rebuild it: {REBUILD_COMMAND}")
    if mismatch:
        raise OpLibraryError(
            f"the memrec_tf op library {path} {mismatch}. Rebuild it with TensorFlow "
            f"{tf.__version__} installed: {REBUILD_COMMAND}")
    try:
        return tf.load_op_library(path)
    except (tf.errors.NotFoundError, OSError) as e:
        raise OpLibraryError(
            f"the memrec_tf op library {path} (built for TensorFlow {built_for}) "
            f"failed to load into TensorFlow {tf.__version__}: {e}. Rebuild it: "
            f"{REBUILD_COMMAND}") from e


def load_library():
    """The loaded op module; raises OpLibraryError (cached) if it cannot load."""
    global _library, _error
    with _lock:
        if _library is None and _error is None:
            try:
                _library = _load()
            except OpLibraryError as e:
                _error = e
        if _error is not None:
            raise _error
        return _library


def is_available():
    """(True, "") when the fused op can be used, else (False, reason)."""
    try:
        load_library()
        return True, ""
    except OpLibraryError as e:
        return False, str(e)


def lookup(ids, row_splits, weights, token_table, weight_table, signature,
           combiner="sum", weight_mode="scalar", token_scales=None, name=None):
    """Runs the fused MemRecLookup op, or MemRecLookupQuantized for a token
    table stored for serving.

    A token table of the weight table's dtype runs MemRecLookup (float32,
    float64, float16 or bfloat16 throughout). A token table stored in fewer
    bits than a float32 weight table (see `memrec_tf.ops.quantize`) runs
    MemRecLookupQuantized: int8 with `token_scales`, the float32 scale of each
    row, or bfloat16 without scales. Its rows read as float(q) * scale[r]
    (int8) or float(q) (bfloat16) and sum in float32, so its float32 output
    equals this lookup on `quantize.round_trip` of the table. It is forward
    only: differentiating it raises LookupError (train in float32).

    Args:
      ids: int64 [N].
      row_splits: int64 [B + 1] bag offsets; empty when combiner is "none".
      weights: [N] per-id weights in the weight table's dtype, or [0] for none.
      token_table: [m, d].
      weight_table: [m_w, 1] ("scalar") or [m_w, k] ("per_hash").
      signature: a `memrec_tf.ops.signature.Signature`.
      combiner: "none", "sum", "mean" or "sqrtn".
      weight_mode: "scalar" or "per_hash".
      token_scales: float32 [m], the row scales of an int8 `token_table`
        (`quantize.quantize_rows` returns them); None for any other table.

    Returns:
      [B, d], or [N, d] when combiner is "none"; float32 for a quantized
      token table, else in the tables' dtype.

    Raises:
      ValueError: token_scales missing for an int8 table, given for another,
        or not float32; an int8 table with a weight table that is not
        float32.
      tf.errors.InvalidArgumentError: an input of the wrong rank or shape
        (token_scales not [m] for an int8 table), or row_splits that are not
        valid offsets into the ids.
    """
    table_dtype, weight_dtype = _dtype_of(token_table), _dtype_of(weight_table)
    quantized = table_dtype == tf.int8 or (
        table_dtype == tf.bfloat16 and weight_dtype == tf.float32)
    if not quantized:
        if token_scales is not None:
            raise ValueError(
                f"token_scales is for an int8 token_table; this token_table is "
                f"{table_dtype.name}, whose rows have no scales: pass token_scales=None")
        return load_library().mem_rec_lookup(
            ids, row_splits, weights, token_table, weight_table, combiner=combiner,
            weight_mode=weight_mode, name=name, **signature.op_attrs())
    token_scales = _checked_scales(table_dtype, weight_dtype, token_scales)
    return load_library().mem_rec_lookup_quantized(
        ids, row_splits, weights, token_table, token_scales, weight_table,
        combiner=combiner, weight_mode=weight_mode, name=name, **signature.op_attrs())


def _dtype_of(value):
    """The dtype of a tensor, variable, array or nested list (as TF converts it)."""
    dtype = getattr(value, "dtype", None)
    return tf.as_dtype(dtype) if dtype is not None else tf.convert_to_tensor(value).dtype


def _checked_scales(table_dtype, weight_dtype, token_scales):
    """The token_scales input of MemRecLookupQuantized, or ValueError."""
    if weight_dtype != tf.float32:
        raise ValueError(
            f"a {table_dtype.name} token_table is read in float32 and needs a float32 "
            f"weight_table, got {weight_dtype.name}")
    if table_dtype == tf.bfloat16:
        if token_scales is not None:
            raise ValueError("a bfloat16 token_table has no row scales: pass "
                             "token_scales=None (scales are for int8 tables)")
        return tf.zeros([0], tf.float32)
    if token_scales is None:
        raise ValueError(
            "an int8 token_table needs token_scales, the float32 scale of each row "
            "(memrec_tf.ops.quantize.quantize_rows returns the rows and their scales)")
    scales_dtype = _dtype_of(token_scales)
    if scales_dtype != tf.float32:
        raise ValueError(f"token_scales must be float32 (one scale per int8 row), "
                         f"got {scales_dtype.name}")
    return token_scales


def hash_rows(ids, signature, num_token_rows, num_weight_rows, name=None):
    """Rows read for each id, computed by the C++ kernel (see core.hash_rows)."""
    return load_library().mem_rec_hash_rows(
        ids, num_token_rows=num_token_rows, num_weight_rows=num_weight_rows,
        name=name, **signature.op_attrs())


def lookup_grad_apply(grad, ids, row_splits, weights, token_table, weight_table, signature,
                      optimizer, slots, learning_rate, combiner="sum", weight_mode="scalar",
                      name=None, **optimizer_attrs):
    """Runs MemRecLookupGradApply: applies the token table's gradient of a
    MemRecLookup to `token_table` in place (sgd, adagrad or adam, the
    formulas of Keras' optimizers), and returns the weight table's gradient.

    Args:
      grad: float32, the gradient of the lookup's output.
      ids, row_splits, weights, weight_table, signature, combiner,
        weight_mode: those of the forward `lookup`.
      token_table: the float32 tf.Variable [m, d] the forward read.
      optimizer: "sgd", "adagrad" or "adam".
      slots: the optimizer's float32 tf.Variables of the token table's shape:
        [] for sgd, [accumulator] for adagrad, [momentum, velocity] for adam.
      learning_rate: a float32 scalar; for adam the bias-corrected step size.
      **optimizer_attrs: epsilon (adagrad, adam), one_minus_beta_1 and
        one_minus_beta_2 (adam).

    Returns:
      float32 [m_w, width], the gradient of the weight table.
    """
    return load_library().mem_rec_lookup_grad_apply(
        grad, ids, row_splits, weights, token_table.handle, weight_table,
        [slot.handle for slot in slots], learning_rate, optimizer=optimizer,
        combiner=combiner, weight_mode=weight_mode, name=name, **optimizer_attrs,
        **signature.op_attrs())


def _lookup_grad(op, grad):
    ids, row_splits, weights, token_table, weight_table = op.inputs
    signature = sig_lib.Signature.from_op(op)
    attrs = dict(combiner=op.get_attr("combiner").decode(),
                 weight_mode=op.get_attr("weight_mode").decode(), **signature.op_attrs())
    if table_gradients.use_dense(token_table, weight_table):
        token_grad, weight_grad = load_library().mem_rec_lookup_grad_dense(
            grad, ids, row_splits, weights, token_table, weight_table, **attrs)
        return [None, None, None, token_grad, weight_grad]
    rows, values, weight_rows, weight_values = load_library().mem_rec_lookup_grad(
        grad, ids, row_splits, weights, token_table, weight_table, **attrs)
    token_grad = tf.IndexedSlices(values, rows, tf.shape(token_table, out_type=tf.int64))
    weight_grad = tf.IndexedSlices(weight_values, weight_rows,
                                   tf.shape(weight_table, out_type=tf.int64))
    # Gradients do not flow to ids, row_splits or the per-id weights.
    return [None, None, None, token_grad, weight_grad]


QUANTIZED_GRADIENT_MESSAGE = (
    "MemRecLookupQuantized has no gradient: int8 and bfloat16 token tables are "
    "for serving (forward only). Train with float32 tables, then store the "
    "trained token table with memrec_tf.ops.quantize.quantize_rows")


def _quantized_lookup_grad(op, grad):
    # Raised, not None: a None gradient would silently leave the float32
    # weight table (and any other input) untrained.
    del op, grad
    raise LookupError(QUANTIZED_GRADIENT_MESSAGE)


for _op_type, _gradient in (("MemRecLookup", _lookup_grad),
                            ("MemRecLookupQuantized", _quantized_lookup_grad)):
    try:
        tf.RegisterGradient(_op_type)(_gradient)
    except KeyError:  # already registered (the module was reloaded)
        pass
tf.no_gradient("MemRecHashRows")
tf.no_gradient("MemRecLookupGrad")
tf.no_gradient("MemRecLookupGradDense")
tf.no_gradient("MemRecLookupGradApply")
