"""Tables stored for serving in fewer bits: one home for the row formats.

Training keeps float32 tables. For serving, a table may be stored as

  * "float32": as trained;
  * "bfloat16": each entry rounded to bfloat16 (2 bytes);
  * "int8": each row r rounded to int8 with one float32 scale per row,
    scale[r] = max|row r| / 127 and q = round(row / scale[r]) in [-127, 127]
    (d + 4 bytes per row). A row of zeros has scale 0.

Whatever the format, a row is read back as float32 `dequantize_rows` does
it: float(q) * scale[r] for int8, float(q) for bfloat16. The fused op's
kernels and the built-in-ops path both read rows that way and accumulate
in float32, so they agree with a float32 lookup on the dequantized table.
"""
import numpy as np
import tensorflow as tf

TABLE_DTYPES = ("float32", "bfloat16", "int8")
INT8_LEVELS = 127
SCALE_BYTES = 4  # one float32 scale per int8 row


def check_table_dtype(table_dtype):
    """The name of a serving table format, or ValueError naming the choices."""
    name = tf.as_dtype(table_dtype).name if isinstance(table_dtype, tf.dtypes.DType) \
        else str(table_dtype)
    if name not in TABLE_DTYPES:
        raise ValueError(f"table_dtype must be one of {', '.join(TABLE_DTYPES)}, "
                         f"got {table_dtype!r}")
    return name


def row_bytes(width, table_dtype):
    """Bytes of one stored row of `width` entries in `table_dtype`."""
    name = check_table_dtype(table_dtype)
    if name == "int8":
        return int(width) + SCALE_BYTES
    return int(width) * tf.as_dtype(name).size


def quantize_rows(table, table_dtype):
    """(values, scales) of a float table stored as `table_dtype`.

    Args:
      table: [rows, width] float table (tensor, variable or numpy array).
      table_dtype: "float32", "bfloat16" or "int8".
    Returns:
      values: [rows, width] of `table_dtype`; scales: [rows] float32 for
      "int8", else None.
    """
    name = check_table_dtype(table_dtype)
    table = tf.convert_to_tensor(table, tf.float32)
    if name == "float32":
        return table, None
    if name == "bfloat16":
        return tf.cast(table, tf.bfloat16), None
    if not bool(tf.reduce_all(tf.math.is_finite(table))):
        raise ValueError("cannot round a table with NaN or Inf entries to int8")
    scales = tf.reduce_max(tf.abs(table), axis=1) / INT8_LEVELS
    q = tf.round(tf.math.divide_no_nan(table, scales[:, None]))
    q = tf.clip_by_value(q, -INT8_LEVELS, INT8_LEVELS)
    return tf.cast(q, tf.int8), scales


def dequantize_rows(values, scales=None):
    """float32 rows of stored `values` ([..., width]); `scales` [...] for int8."""
    rows = tf.cast(values, tf.float32)
    if scales is not None:
        rows = rows * tf.cast(scales, tf.float32)[..., None]
    return rows


def round_trip(table, table_dtype):
    """The float32 table a lookup reads after storing `table` as `table_dtype`."""
    return dequantize_rows(*quantize_rows(table, table_dtype))


def round_trip_numpy(table, table_dtype):
    """`round_trip` for a numpy array, returned as numpy float32."""
    return np.asarray(round_trip(np.asarray(table, np.float32), table_dtype))
