"""memrec_tf.ops.quantize: the serving table formats and their round trips."""
import numpy as np
import pytest
import tensorflow as tf

from memrec_tf.ops import quantize

FLOAT32_EPS = np.finfo(np.float32).eps


def _table(rng, rows=40, width=24):
    table = rng.normal(0.0, 0.3, [rows, width]).astype(np.float32)
    table[3] *= 1e-30  # rows of very different magnitudes
    table[4] *= 1e20
    table[5] = 0.0  # a row of zeros
    table[6, :] = 0.0
    table[6, 2] = -2.5  # one non-zero entry
    return table


def test_int8_error_is_at_most_half_a_step_per_entry(rng):
    table = _table(rng)
    values, scales = quantize.quantize_rows(table, "int8")
    assert values.dtype == tf.int8 and values.shape == table.shape
    assert scales.dtype == tf.float32 and scales.shape == (table.shape[0],)
    scales = scales.numpy()
    np.testing.assert_array_equal(scales, np.abs(table).max(axis=1) / quantize.INT8_LEVELS)
    error = np.abs(quantize.round_trip_numpy(table, "int8") - table)
    # Half a step, plus the float32 roundings of x / scale and float(q) * scale.
    bound = 0.5 * scales[:, None] * (1 + 4 * FLOAT32_EPS) + 2 * FLOAT32_EPS * np.abs(table)
    assert np.all(error <= bound)
    # The largest entry of each non-zero row takes the full range.
    q = values.numpy().astype(np.int32)
    nonzero = scales > 0
    np.testing.assert_array_equal(np.abs(q).max(axis=1)[nonzero], quantize.INT8_LEVELS)
    assert np.abs(q).max() <= quantize.INT8_LEVELS


def test_int8_rows_of_zeros_have_scale_zero_and_read_back_as_zeros(rng):
    table = _table(rng)
    values, scales = quantize.quantize_rows(table, "int8")
    assert scales.numpy()[5] == 0.0
    np.testing.assert_array_equal(values.numpy()[5], 0)
    back = quantize.round_trip_numpy(table, "int8")
    np.testing.assert_array_equal(back[5], 0.0)
    assert back[6, 2] == -2.5 and np.count_nonzero(back[6]) == 1


def test_dequantize_is_one_float32_product_per_entry(rng):
    values, scales = quantize.quantize_rows(_table(rng), "int8")
    want = values.numpy().astype(np.float32) * scales.numpy()[:, None]  # float32 products
    got = quantize.dequantize_rows(values, scales).numpy()
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_int8_refuses_non_finite_tables(rng, bad):
    table = _table(rng)
    table[7, 1] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        quantize.quantize_rows(table, "int8")


def test_bfloat16_round_trip_is_the_nearest_bfloat16(rng):
    table = _table(rng)
    values, scales = quantize.quantize_rows(table, "bfloat16")
    assert values.dtype == tf.bfloat16 and scales is None
    back = quantize.round_trip_numpy(table, "bfloat16")
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, tf.cast(tf.cast(table, tf.bfloat16), tf.float32).numpy())
    # 8 significant bits: half a unit in the last place is 2^-8 relative.
    assert np.all(np.abs(back - table) <= 2.0 ** -8 * np.abs(table))
    # Exactly representable values come back unchanged.
    exact = np.array([[0.0, 1.0, -0.5, 3.0, 2.0 ** -20]], np.float32)
    np.testing.assert_array_equal(quantize.round_trip_numpy(exact, "bfloat16"), exact)


def test_float32_is_stored_as_it_is(rng):
    table = _table(rng)
    values, scales = quantize.quantize_rows(table, "float32")
    assert scales is None
    np.testing.assert_array_equal(values.numpy(), table)
    np.testing.assert_array_equal(quantize.round_trip_numpy(table, tf.float32), table)


@pytest.mark.parametrize("table_dtype, width, expected", [
    ("float32", 64, 256), ("bfloat16", 64, 128), ("int8", 64, 68),
    (tf.int8, 16, 20), (tf.bfloat16, 1, 2), ("float32", 0, 0), ("int8", 0, 4)])
def test_row_bytes(table_dtype, width, expected):
    assert quantize.row_bytes(width, table_dtype) == expected


@pytest.mark.parametrize("bad", ["float16", "int4", tf.float64, "fp8"])
def test_unknown_formats_are_refused_naming_the_choices(bad):
    with pytest.raises(ValueError, match="float32, bfloat16, int8"):
        quantize.check_table_dtype(bad)
    with pytest.raises(ValueError, match="table_dtype must be one of"):
        quantize.row_bytes(8, bad)
    with pytest.raises(ValueError, match="table_dtype must be one of"):
        quantize.quantize_rows(np.zeros([2, 2], np.float32), bad)


def test_check_table_dtype_names_tf_dtypes():
    assert quantize.check_table_dtype(tf.int8) == "int8"
    assert quantize.check_table_dtype("bfloat16") == "bfloat16"
