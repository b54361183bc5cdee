"""Sizing every embedding method to one byte budget.

Given the categorical features (per-feature cardinalities, or a total
vocabulary V for a global dense-index space), the width d and a budget in
bytes (or a compression factor c, meaning full bytes / c), each function here
returns the largest configuration of one method whose tables, all of them
counted, fit the budget. The budget is in served bytes: with
table_dtype="int8" (or "bfloat16") a method's token table (MEM-REC) or
tables (full, hashing, QR) are counted as stored in that format
(`memrec_tf.ops.quantize.row_bytes`), so more rows fit; MEM-REC's weight
table is counted in float32. The full bytes, and so a compression factor,
are always those of float32 full tables. The options plug into `memrec_tf.models.build_model(...,
embedding=config.method, embedding_options=config.options)`.
"""
import dataclasses
import math

from memrec_tf import features
from memrec_tf.ops import quantize
from memrec_tf.sizing.tables import (WEIGHT_TABLE_DTYPE, full_table_bytes, memrec_bytes,
                                     weight_width)


@dataclasses.dataclass(frozen=True)
class BudgetConfig:
    """One method sized to a budget.

    Attributes:
      method: the embedding method ("memrec", "memrec_per_feature", "full",
        "hashing" or "qr").
      options: its embedding options (the layer's arguments).
      bytes: served bytes of all its tables.
      full_bytes: bytes of the float32 full tables it replaces.
      table_dtype: the format its (token) tables are counted in.
    """

    method: str
    options: dict
    bytes: int
    full_bytes: int
    table_dtype: str = "float32"

    @property
    def ratio(self):
        return self.full_bytes / self.bytes


# Share of a vocabulary signature's token rows given to head rows (the
# most frequent values' own rows), as measured in the accuracy benchmarks.
HEAD_FRACTION = 0.25


def head_rows(token_rows, vocabulary_size):
    """The head rows given to a vocabulary signature of `token_rows` token rows."""
    return min(int(HEAD_FRACTION * token_rows), vocabulary_size)


def budget_bytes(full_bytes, budget=None, compression=None):
    """The budget in bytes: `budget` itself, or full_bytes // compression.

    Raises:
      ValueError: neither or both given, or a value that is not positive.
    """
    if (budget is None) == (compression is None):
        raise ValueError("give exactly one of budget (bytes) and compression (a factor), got "
                         f"budget={budget!r}, compression={compression!r}")
    if budget is not None:
        if int(budget) != budget or budget < 1:
            raise ValueError(f"budget must be a positive whole number of bytes, got {budget!r}")
        return int(budget)
    if not compression > 0:
        raise ValueError(f"compression must be > 0, got {compression!r}")
    return int(full_bytes // compression)


def _memrec_rows(budget, output_dim, weight_fraction, num_hashes, num_weight_hashes,
                 weight_mode, num_head_rows, table_dtype):
    """(m, m_w) of one MEM-REC layer within `budget` bytes, or None if it cannot fit."""
    token_row = quantize.row_bytes(output_dim, table_dtype)
    weight_row = quantize.row_bytes(weight_width(num_hashes, weight_mode), WEIGHT_TABLE_DTYPE)
    min_token, min_weight = num_head_rows + num_hashes, max(1, num_weight_hashes)
    spare = budget - min_token * token_row
    if spare < min_weight * weight_row:
        return None
    # The weight table takes its fraction of the budget, but never the rows
    # the token table needs.
    weight_rows = max(min_weight, min(int(weight_fraction * budget) // weight_row,
                                      spare // weight_row))
    token_rows = (budget - weight_rows * weight_row) // token_row
    return token_rows, weight_rows


def _check_memrec_args(weight_fraction, weight_mode):
    if not 0 <= weight_fraction < 1:
        raise ValueError(f"weight_fraction must be in [0, 1), got {weight_fraction!r}")
    if weight_mode not in ("scalar", "per_hash"):
        raise ValueError(f"weight_mode must be 'scalar' or 'per_hash', got {weight_mode!r}")


def memrec_config(output_dim, cardinalities=None, vocabulary_size=0, budget=None,
                  compression=None, weight_fraction=0.125, num_hashes=2, num_weight_hashes=1,
                  weight_mode="scalar", num_head_rows=0, table_dtype="float32"):
    """Shared MEM-REC: m and m_w with the weight table about weight_fraction of the bytes.

    The token table is counted as served in `table_dtype`.

    Returns:
      A `BudgetConfig` with options num_token_rows, num_weight_rows,
      num_hashes, num_weight_hashes, weight_mode (and num_head_rows if set).

    Raises:
      ValueError: the budget is below k (+ head) token rows and the weight
        rows k_w needs.
    """
    _check_memrec_args(weight_fraction, weight_mode)
    table_dtype = quantize.check_table_dtype(table_dtype)
    full = full_table_bytes(cardinalities, vocabulary_size, output_dim)
    budget = budget_bytes(full, budget, compression)
    rows = _memrec_rows(budget, output_dim, weight_fraction, num_hashes, num_weight_hashes,
                        weight_mode, num_head_rows, table_dtype)
    if rows is None:
        raise ValueError(f"a budget of {budget} bytes cannot hold a MEM-REC layer with "
                         f"d={output_dim}, k={num_hashes}, k_w={num_weight_hashes}, "
                         f"num_head_rows={num_head_rows}, token table as {table_dtype}")
    options = dict(num_token_rows=rows[0], num_weight_rows=rows[1], num_hashes=num_hashes,
                   num_weight_hashes=num_weight_hashes, weight_mode=weight_mode)
    if num_head_rows:
        options["num_head_rows"] = num_head_rows
    used = memrec_bytes(rows[0], rows[1], output_dim, num_hashes, weight_mode, table_dtype)
    return BudgetConfig("memrec", options, used, full, table_dtype)


def _split(total, minimums, shares):
    """Minimums plus `total - sum(minimums)` split in proportion to shares."""
    spare = total - sum(minimums)
    whole = sum(shares)
    return [low + spare * share // whole for low, share in zip(minimums, shares)]


def memrec_per_feature_config(output_dim, cardinalities, vocabulary_size=0, budget=None,
                              compression=None, weight_fraction=0.125, num_hashes=2,
                              num_weight_hashes=1, weight_mode="scalar",
                              table_dtype="float32"):
    """MEM-REC tables per feature, the budget split in proportion to cardinality.

    Every feature first gets the least a MEM-REC layer needs (k token rows and
    max(1, k_w) weight rows); the rest is split by cardinality. A global
    vocabulary_size only sets the full bytes (and the budget from a
    compression factor).

    Returns:
      A `BudgetConfig` with per-feature lists num_token_rows, num_weight_rows.

    Raises:
      ValueError: the budget is below the least every feature needs.
    """
    _check_memrec_args(weight_fraction, weight_mode)
    table_dtype = quantize.check_table_dtype(table_dtype)
    cards = list(cardinalities)
    full = full_table_bytes(cards, vocabulary_size, output_dim)
    budget = budget_bytes(full, budget, compression)
    least = memrec_bytes(num_hashes, max(1, num_weight_hashes), output_dim, num_hashes,
                         weight_mode, table_dtype)
    if least * len(cards) > budget:
        raise ValueError(f"a budget of {budget} bytes is below {least * len(cards)}, the least "
                         f"{len(cards)} per-feature MEM-REC layers need")
    shares = _split(budget, [least] * len(cards), cards)
    token_rows, weight_rows = [], []
    for share in shares:
        m, m_w = _memrec_rows(share, output_dim, weight_fraction, num_hashes,
                              num_weight_hashes, weight_mode, 0, table_dtype)
        token_rows.append(m)
        weight_rows.append(m_w)
    used = sum(memrec_bytes(m, m_w, output_dim, num_hashes, weight_mode, table_dtype)
               for m, m_w in zip(token_rows, weight_rows))
    options = dict(num_token_rows=token_rows, num_weight_rows=weight_rows,
                   num_hashes=num_hashes, num_weight_hashes=num_weight_hashes,
                   weight_mode=weight_mode)
    return BudgetConfig("memrec_per_feature", options, used, full, table_dtype)


def hashing_config(output_dim, cardinalities=None, vocabulary_size=0, budget=None,
                   compression=None, table_dtype="float32"):
    """The hashing trick: R rows (served as `table_dtype`), at most the size of
    the index space.

    Raises:
      ValueError: the budget is below one row.
    """
    table_dtype = quantize.check_table_dtype(table_dtype)
    full = full_table_bytes(cardinalities, vocabulary_size, output_dim)
    budget = budget_bytes(full, budget, compression)
    row = quantize.row_bytes(output_dim, table_dtype)
    rows = min(budget // row, features.full_rows(cardinalities or (), vocabulary_size))
    if rows < 1:
        raise ValueError(f"a budget of {budget} bytes is below one row of {row} bytes")
    return BudgetConfig("hashing", dict(num_rows=rows), rows * row, full, table_dtype)


def qr_least_rows(num_values):
    """min over R of R + ceil(V / R): the fewest rows a QR pair covering V values needs."""
    root = math.isqrt(num_values)
    return min(r + -(-num_values // r) for r in (max(1, root), root + 1))


def qr_rows(num_values, max_rows):
    """(R, Q) with R * Q >= V and R + Q <= max_rows, R as large as possible.

    The remainder table is the one whose rows are most often unshared, so it
    takes all the rows the quotient table does not need. None if impossible.
    """
    if max_rows >= num_values + 1:
        return num_values, 1
    if max_rows < qr_least_rows(num_values):
        return None
    # R + ceil(V / R) does not decrease for R >= sqrt(V): start from the real
    # root of R + V / R = max_rows and step to the exact boundary.
    r = int((max_rows + math.sqrt(max(0, max_rows * max_rows - 4 * num_values))) / 2)
    r = max(1, min(r, num_values))
    while r > 1 and r + -(-num_values // r) > max_rows:
        r -= 1
    while r < num_values and r + 1 + -(-num_values // (r + 1)) <= max_rows:
        r += 1
    return r, -(-num_values // r)


def qr_config(output_dim, cardinalities=None, vocabulary_size=0, budget=None,
              compression=None, per_feature=False, combine="product", table_dtype="float32"):
    """Quotient-remainder: R and Q with R * Q >= V and R + Q rows in the budget.

    Shared: one pair covering the whole index space (V, or the sum of
    cardinalities). Per feature: a pair per feature, each first given the
    fewest rows that cover its cardinality, the rest split by cardinality.
    Both tables are counted as served in `table_dtype`.

    Raises:
      ValueError: the budget is below the fewest rows that cover the space(s).
    """
    if per_feature and (vocabulary_size or not cardinalities):
        raise ValueError("per-feature QR needs per-feature cardinalities, not a global "
                         f"vocabulary_size={vocabulary_size!r}")
    table_dtype = quantize.check_table_dtype(table_dtype)
    full = full_table_bytes(cardinalities, vocabulary_size, output_dim)
    budget = budget_bytes(full, budget, compression)
    row = quantize.row_bytes(output_dim, table_dtype)
    max_rows = budget // row
    spaces = (list(cardinalities) if per_feature
              else [features.full_rows(cardinalities or (), vocabulary_size)])
    least = [qr_least_rows(v) for v in spaces]
    if sum(least) > max_rows:
        raise ValueError(f"a budget of {budget} bytes ({max_rows} rows of {row} bytes) is "
                         f"below the {sum(least)} rows QR needs to cover {spaces}")
    pairs = [qr_rows(v, n) for v, n in zip(spaces, _split(max_rows, least, spaces))]
    rem = [p[0] for p in pairs]
    quo = [p[1] for p in pairs]
    options = dict(remainder_rows=rem if per_feature else rem[0],
                   quotient_rows=quo if per_feature else quo[0],
                   per_feature=per_feature, combine=combine)
    return BudgetConfig("qr", options, (sum(rem) + sum(quo)) * row, full, table_dtype)


def full_config(output_dim, cardinalities=None, vocabulary_size=0, table_dtype="float32"):
    """The full tables (no options), served as `table_dtype`; full_bytes are
    the float32 full tables every ratio is against."""
    table_dtype = quantize.check_table_dtype(table_dtype)
    full = full_table_bytes(cardinalities, vocabulary_size, output_dim)
    served = full_table_bytes(cardinalities, vocabulary_size, output_dim, table_dtype)
    return BudgetConfig("full", {}, served, full, table_dtype)


def budget_configs(output_dim, cardinalities=None, vocabulary_size=0, budget=None,
                   compression=None, weight_fraction=0.125, num_hashes=2,
                   num_weight_hashes=1, weight_mode="scalar", table_dtype="float32"):
    """Every method sized to one budget of served bytes: {method: BudgetConfig}.

    Every method's tables are counted as served in `table_dtype` (MEM-REC's
    weight table in float32).

    A method that cannot fit (the full tables, usually; QR below 2 sqrt(V)
    rows) is left out, as is memrec_per_feature without per-feature
    cardinalities.
    """
    full = full_table_bytes(cardinalities, vocabulary_size, output_dim)
    budget = budget_bytes(full, budget, compression)
    memrec_args = dict(weight_fraction=weight_fraction, num_hashes=num_hashes,
                       num_weight_hashes=num_weight_hashes, weight_mode=weight_mode,
                       table_dtype=table_dtype)
    makers = {
        "memrec": lambda: memrec_config(output_dim, cardinalities, vocabulary_size, budget,
                                        **memrec_args),
        "hashing": lambda: hashing_config(output_dim, cardinalities, vocabulary_size, budget,
                                          table_dtype=table_dtype),
        "qr": lambda: qr_config(output_dim, cardinalities, vocabulary_size, budget,
                                table_dtype=table_dtype),
    }
    if cardinalities:
        makers["memrec_per_feature"] = lambda: memrec_per_feature_config(
            output_dim, cardinalities, vocabulary_size, budget, **memrec_args)
    configs = {}
    served_full = full_config(output_dim, cardinalities, vocabulary_size, table_dtype)
    if served_full.bytes <= budget:
        configs["full"] = served_full
    for method, make in makers.items():
        try:
            configs[method] = make()
        except ValueError:
            continue
    return configs
