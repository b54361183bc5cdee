"""How many bytes MEM-REC saves: per layer, against the full table it replaces.

Every byte served is counted: token and weight tables (as served in
`table_dtype`, see `memrec_tf.sizing.tables`) and the id -> index mappings
a model holds (`mapping_bytes` of its vocabulary layers, one row each).
"""
import dataclasses

from memrec_tf.ops import quantize
from memrec_tf.sizing import tables


@dataclasses.dataclass
class LayerMemory:
    """One layer's served bytes and the full embedding table's bytes.

    A MemRecEmbedding has table bytes; a vocabulary layer's row has only
    `mapping_bytes` (its id -> index mapping).
    """

    name: str
    token_table_bytes: int
    weight_table_bytes: int
    full_table_bytes: int
    mapping_bytes: int = 0

    @property
    def bytes(self):
        """Every byte: tables and mapping."""
        return self.token_table_bytes + self.weight_table_bytes + self.mapping_bytes

    @property
    def ratio(self):
        """Compression: full-table bytes over MEM-REC bytes."""
        return self.full_table_bytes / self.bytes if self.bytes else float("inf")


def memory_report(model, vocab_sizes=None, table_dtype=None):
    """Lists each MemRecEmbedding's bytes against the full table it replaces.

    Args:
      model: a Keras model (or a single MemRecEmbedding layer).
      vocab_sizes: {layer name: vocabulary size, or a list of sizes for a
        layer whose tables serve several features}. A layer absent from it
        uses its `vocabulary_size`; with neither, its full size is unknown
        (reported as 0).
      table_dtype: None: tables at the layer's variable dtype, against full
        tables of that dtype. "float32", "bfloat16" or "int8": token tables
        as served in that format (weight tables float32), against float32
        full tables.

    Returns:
      A list of `LayerMemory`: the MemRecEmbedding layers in layer order,
      then one row per layer holding an id -> index mapping.
    """
    vocab_sizes = dict(vocab_sizes or {})
    rows = []
    from memrec_tf.layers.stored import memrec_layers

    layers = memrec_layers(model)
    unknown = sorted(set(vocab_sizes) - {layer.name for layer in layers})
    if unknown:
        raise ValueError(f"vocab_sizes names {unknown}, which are not MemRecEmbedding layers "
                         f"of this model; its layers are {[layer.name for layer in layers]}")
    for layer in layers:
        itemsize = tables.dtype_size(layer.variable_dtype)
        vocab = vocab_sizes.get(layer.name, layer.vocabulary_size)
        if isinstance(vocab, (list, tuple)):
            vocab = sum(int(v) for v in vocab)
        token, weight = layer.table_shapes()
        if table_dtype is None:
            token_bytes = tables.table_bytes([token], itemsize)
            weight_bytes = tables.table_bytes([weight], itemsize)
            full_row = layer.output_dim * itemsize
        else:
            token_bytes = tables.stored_table_bytes([token], table_dtype)
            weight_bytes = tables.stored_table_bytes([weight], tables.WEIGHT_TABLE_DTYPE)
            full_row = quantize.row_bytes(layer.output_dim, tables.FULL_TABLE_DTYPE)
        rows.append(LayerMemory(name=layer.name, token_table_bytes=token_bytes,
                                weight_table_bytes=weight_bytes,
                                full_table_bytes=int(vocab) * full_row))
    from memrec_tf.layers.vocabulary import VocabularyLookup  # pylint: disable=g-import-not-at-top

    # pylint: disable-next=protected-access
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if isinstance(layer, VocabularyLookup):
            rows.append(LayerMemory(f"{layer.name} (id->index mapping)", 0, 0, 0,
                                    layer.mapping_bytes))
    return rows


def format_report(rows):
    """The report as a text table."""
    lines = [f"{'layer':<24}{'bytes served':>16}{'full bytes':>18}{'ratio':>10}"]
    for r in rows:
        ratio = f"{r.ratio:>10.1f}" if r.full_table_bytes else f"{'':>10}"
        lines.append(f"{r.name:<24}{r.bytes:>16,}{r.full_table_bytes:>18,}{ratio}")
    total = sum(r.bytes for r in rows)
    full = sum(r.full_table_bytes for r in rows)
    if rows:
        lines.append(f"{'total':<24}{total:>16,}{full:>18,}{(full / total if total else 0):>10.1f}")
    return "\n".join(lines)
