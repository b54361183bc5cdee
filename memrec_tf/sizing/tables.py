"""The bytes of every table an embedding needs to serve: one home for each count.

  * a MEM-REC layer: a token table [m, d] and a weight table [m_w, width],
    width = k for weight_mode="per_hash", else 1 (`weight_width`);
  * a full table: one row of d per value (`full_table_bytes`);
  * an id -> index mapping inside the model (`vocabulary_mapping_bytes`): an
    int64 key and an int64 index per known value, and an int64
    out-of-vocabulary index per feature.
"""
import dataclasses

import tensorflow as tf

from memrec_tf import features

INT64_BYTES = 8


def weight_width(num_hashes, weight_mode):
    """Columns of the weight table: k for "per_hash", 1 for "scalar"."""
    return num_hashes if weight_mode == "per_hash" else 1


def memrec_table_shapes(num_token_rows, num_weight_rows, output_dim, num_hashes, weight_mode):
    """[(rows, width)] of a MEM-REC layer's token and weight tables."""
    return [(num_token_rows, output_dim),
            (num_weight_rows, weight_width(num_hashes, weight_mode))]


def table_bytes(shapes, itemsize):
    """Bytes of tables [(rows, width), ...] of `itemsize`-byte entries."""
    return sum(int(rows) * int(width) for rows, width in shapes) * int(itemsize)


def memrec_bytes(num_token_rows, num_weight_rows, output_dim, num_hashes, weight_mode,
                 itemsize):
    """Bytes of a MEM-REC layer's two tables."""
    return table_bytes(memrec_table_shapes(num_token_rows, num_weight_rows, output_dim,
                                           num_hashes, weight_mode), itemsize)


def full_table_bytes(cardinalities, vocabulary_size, output_dim, itemsize):
    """Bytes of the full tables: one row of `output_dim` per value."""
    if not cardinalities and not vocabulary_size:
        raise ValueError("give cardinalities or a vocabulary_size")
    return features.full_rows(cardinalities or (), vocabulary_size) * output_dim * itemsize


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
