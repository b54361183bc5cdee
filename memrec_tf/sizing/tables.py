"""The bytes of every table an embedding needs to serve: one home for each count.

  * a MEM-REC layer: a token table [m, d] and a weight table [m_w, width],
    width = k for weight_mode="per_hash", else 1 (`weight_width`);
  * a full table: one row of d per value (`full_table_bytes`);
  * an id -> index mapping inside the model (`vocabulary_mapping_bytes`): an
    int64 key and an int64 index per known value, and an int64
    out-of-vocabulary index per feature.

Served bytes: a table may be stored for serving in another format than the
float32 it is trained in (`memrec_tf.ops.quantize`: "bfloat16", or "int8"
with a float32 scale per row); `quantize.row_bytes` gives the bytes of one
stored row. `table_dtype` names that format for the token table (MEM-REC)
or the tables (full, hashing, QR). MEM-REC's weight table is small (1/8 of
the bytes or less) and always counted as served in float32
(WEIGHT_TABLE_DTYPE). The full tables every compression is measured
against are float32 (FULL_TABLE_DTYPE): "compression against float32 full
tables", whatever format the compressed method is served in.
"""
import dataclasses

import tensorflow as tf

from memrec_tf import features
from memrec_tf.ops import quantize

INT64_BYTES = 8
# The format MEM-REC's weight table is served in, whatever the token table's.
WEIGHT_TABLE_DTYPE = "float32"
# The format of the full tables every compression factor is against.
FULL_TABLE_DTYPE = "float32"


def weight_width(num_hashes, weight_mode):
    """Columns of the weight table: k for "per_hash", 1 for "scalar"."""
    return num_hashes if weight_mode == "per_hash" else 1


def memrec_table_shapes(num_token_rows, num_weight_rows, output_dim, num_hashes, weight_mode):
    """[(rows, width)] of a MEM-REC layer's token and weight tables."""
    return [(num_token_rows, output_dim),
            (num_weight_rows, weight_width(num_hashes, weight_mode))]


def table_bytes(shapes, itemsize):
    """Bytes of tables [(rows, width), ...] of `itemsize`-byte entries, as they
    are held in memory (a layer's variables; see `stored_table_bytes` for
    the bytes a table is served in)."""
    return sum(int(rows) * int(width) for rows, width in shapes) * int(itemsize)


def stored_table_bytes(shapes, table_dtype="float32"):
    """Bytes of tables [(rows, width), ...] stored for serving as `table_dtype`."""
    return sum(int(rows) * quantize.row_bytes(width, table_dtype) for rows, width in shapes)


def memrec_bytes(num_token_rows, num_weight_rows, output_dim, num_hashes, weight_mode,
                 table_dtype="float32"):
    """Served bytes of a MEM-REC layer's two tables: the token table as
    `table_dtype`, the weight table as WEIGHT_TABLE_DTYPE."""
    token, weight = memrec_table_shapes(num_token_rows, num_weight_rows, output_dim,
                                        num_hashes, weight_mode)
    return (stored_table_bytes([token], table_dtype)
            + stored_table_bytes([weight], WEIGHT_TABLE_DTYPE))


def full_table_bytes(cardinalities, vocabulary_size, output_dim, table_dtype=FULL_TABLE_DTYPE):
    """Bytes of the full tables, one row of `output_dim` per value, as `table_dtype`
    (by default the float32 tables every compression is against)."""
    if not cardinalities and not vocabulary_size:
        raise ValueError("give cardinalities or a vocabulary_size")
    rows = features.full_rows(cardinalities or (), vocabulary_size)
    return stored_table_bytes([(rows, output_dim)], table_dtype)


def vocabulary_mapping_bytes(cardinalities):
    """Bytes of the in-model id -> index mapping of `memrec_tf.layers.VocabularyLookup`.

    Args:
      cardinalities: per feature, its known values + 1 (its OOV index), as
        `memrec_tf.data.counted_cardinalities` gives them.
    """
    cards = list(cardinalities)
    known = sum(cards) - len(cards)
    return INT64_BYTES * (2 * known + len(cards))


def dtype_size(dtype):
    """Bytes per entry of a table of `dtype` (default float32)."""
    return tf.as_dtype(dtype or "float32").size


@dataclasses.dataclass(frozen=True)
class EmbeddingBytes:
    """What an embedding needs to serve, against the full tables it replaces.

    Attributes:
      table_bytes: bytes of its tables as stored.
      full_bytes: bytes of the full tables (one row per value).
      mapping_bytes: bytes of any id -> index mapping it holds.
    """

    table_bytes: int
    full_bytes: int
    mapping_bytes: int = 0

    @property
    def bytes(self):
        """Every byte: tables and mapping."""
        return self.table_bytes + self.mapping_bytes

    @property
    def ratio(self):
        """Compression: full bytes over every byte it needs."""
        return self.full_bytes / self.bytes if self.bytes else float("inf")

    def __add__(self, other):
        return EmbeddingBytes(self.table_bytes + other.table_bytes,
                              self.full_bytes + other.full_bytes,
                              self.mapping_bytes + other.mapping_bytes)
