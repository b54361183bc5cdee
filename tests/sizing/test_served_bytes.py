"""Budgets in served bytes: tables stored as int8 (a float32 scale per row) or
bfloat16 fit more rows in the same budget, and never more bytes than it."""
import pytest

from memrec_tf import sizing
from memrec_tf.ops import quantize

D = 16
FRAPPE_VALUES = 5382  # the size of Frappe's global index
CARDS = [20, 30, 50, 100, 200]
DTYPES = ("float32", "bfloat16", "int8")
COMPRESSIONS = (4, 16, 64, 256)


def test_row_bytes_of_each_format():
    assert quantize.row_bytes(D, "float32") == 64
    assert quantize.row_bytes(D, "bfloat16") == 32
    assert quantize.row_bytes(D, "int8") == D + quantize.SCALE_BYTES


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_int8_fits_three_times_the_token_rows_of_float32(compression):
    f32 = sizing.memrec_config(D, vocabulary_size=FRAPPE_VALUES, compression=compression)
    i8 = sizing.memrec_config(D, vocabulary_size=FRAPPE_VALUES, compression=compression,
                              table_dtype="int8")
    bf16 = sizing.memrec_config(D, vocabulary_size=FRAPPE_VALUES, compression=compression,
                                table_dtype="bfloat16")
    m32, m8, m16 = (c.options["num_token_rows"] for c in (f32, i8, bf16))
    # The same token bytes hold 64 / 20 = 3.2 times the rows (to a row's rounding).
    assert 3 * m32 <= m8 <= 3.2 * (m32 + 1)
    assert 2 * m32 <= m16 <= 2 * m32 + 1
    # The weight table is served in float32 and keeps its share of the bytes.
    assert i8.options["num_weight_rows"] == f32.options["num_weight_rows"]
    assert (i8.table_dtype, f32.table_dtype) == ("int8", "float32")
    # Compression stays against the float32 full tables.
    assert i8.full_bytes == f32.full_bytes == FRAPPE_VALUES * D * 4


@pytest.mark.parametrize("table_dtype", DTYPES)
@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_counted_bytes_never_exceed_the_budget(table_dtype, compression):
    budget = FRAPPE_VALUES * D * 4 // compression
    configs = sizing.budget_configs(D, vocabulary_size=FRAPPE_VALUES, compression=compression,
                                    table_dtype=table_dtype)
    assert {"memrec", "hashing"} <= set(configs)
    for method, config in configs.items():
        assert config.bytes <= budget, (method, config)
        assert config.table_dtype == table_dtype
    m = configs["memrec"].options
    # The count is the stored rows: token rows in table_dtype, weight rows in float32.
    assert configs["memrec"].bytes == (m["num_token_rows"] * quantize.row_bytes(D, table_dtype)
                                       + m["num_weight_rows"] * 4)
    # And it is tight: one more token row would not fit.
    assert configs["memrec"].bytes + quantize.row_bytes(D, table_dtype) > budget
    rows = configs["hashing"].options["num_rows"]
    assert configs["hashing"].bytes == rows * quantize.row_bytes(D, table_dtype)
    assert configs["hashing"].bytes + quantize.row_bytes(D, table_dtype) > budget


@pytest.mark.parametrize("table_dtype", DTYPES)
def test_per_feature_and_qr_fit_in_served_bytes(table_dtype):
    budget = 3000
    per_feature = sizing.memrec_per_feature_config(D, CARDS, budget=budget,
                                                   table_dtype=table_dtype)
    assert per_feature.bytes <= budget
    assert per_feature.bytes == sum(
        sizing.memrec_bytes(m, m_w, D, 2, "scalar", table_dtype)
        for m, m_w in zip(per_feature.options["num_token_rows"],
                          per_feature.options["num_weight_rows"]))
    qr = sizing.qr_config(D, CARDS, budget=budget * 4, table_dtype=table_dtype)
    o = qr.options
    assert qr.bytes <= budget * 4
    assert qr.bytes == (o["remainder_rows"] + o["quotient_rows"]) * quantize.row_bytes(
        D, table_dtype)


def test_full_served_as_int8_fits_a_third_of_the_float32_bytes():
    full = sizing.full_config(D, vocabulary_size=FRAPPE_VALUES, table_dtype="int8")
    assert full.full_bytes == FRAPPE_VALUES * D * 4
    assert full.bytes == FRAPPE_VALUES * (D + 4)
    configs = sizing.budget_configs(D, vocabulary_size=FRAPPE_VALUES, compression=3,
                                    table_dtype="int8")
    assert configs["full"].bytes == full.bytes
    assert "full" not in sizing.budget_configs(D, vocabulary_size=FRAPPE_VALUES,
                                               compression=3)


def test_unknown_table_dtype_is_refused():
    with pytest.raises(ValueError, match="table_dtype must be one of"):
        sizing.memrec_config(D, vocabulary_size=FRAPPE_VALUES, compression=4,
                             table_dtype="int4")
    with pytest.raises(ValueError, match="table_dtype must be one of"):
        sizing.hashing_config(D, vocabulary_size=FRAPPE_VALUES, compression=4,
                              table_dtype="float16")
