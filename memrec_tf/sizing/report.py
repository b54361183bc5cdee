"""How many bytes MEM-REC saves: per layer, against the full table it replaces."""
import dataclasses

from memrec_tf.sizing import tables


@dataclasses.dataclass
class LayerMemory:
    """One MemRec layer's bytes and the full embedding table's bytes."""

    name: str
    token_table_bytes: int
    weight_table_bytes: int
    full_table_bytes: int

    @property
    def bytes(self):
        return self.token_table_bytes + self.weight_table_bytes

    @property
    def ratio(self):
        """Compression: full-table bytes over MEM-REC bytes."""
        return self.full_table_bytes / self.bytes if self.bytes else float("inf")


def memory_report(model, vocab_sizes=None):
    """Lists each MemRecEmbedding's bytes against the full table it replaces.

    Args:
      model: a Keras model (or a single MemRecEmbedding layer).
      vocab_sizes: {layer name: vocabulary size, or a list of sizes for a
        layer whose tables serve several features}. A layer absent from it
        uses its `vocabulary_size`; with neither, its full size is unknown
        (reported as 0).

    Returns:
      A list of `LayerMemory`, in layer order. The full table is
      vocabulary x output_dim in the layer's variable dtype.
    """
    vocab_sizes = dict(vocab_sizes or {})
    rows = []
    from memrec_tf.layers.memrec_embedding import memrec_layers

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
        rows.append(LayerMemory(
            name=layer.name,
            token_table_bytes=tables.table_bytes([token], itemsize),
            weight_table_bytes=tables.table_bytes([weight], itemsize),
            full_table_bytes=int(vocab) * layer.output_dim * itemsize))
    return rows


def format_report(rows):
    """The report as a text table."""
    lines = [f"{'layer':<24}{'memrec bytes':>16}{'full bytes':>18}{'ratio':>10}"]
    for r in rows:
        lines.append(f"{r.name:<24}{r.bytes:>16,}{r.full_table_bytes:>18,}{r.ratio:>10.1f}")
    total = sum(r.bytes for r in rows)
    full = sum(r.full_table_bytes for r in rows)
    if rows:
        lines.append(f"{'total':<24}{total:>16,}{full:>18,}{(full / total if total else 0):>10.1f}")
    return "\n".join(lines)
