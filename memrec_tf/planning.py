"""`memrec plan`: MEM-REC sizes for a byte budget, beside the other methods.

The plan sizes every embedding method to the same budget (all tables
counted) with `memrec_tf.models.budget_configs`, and adds the MEM-REC
options a layer takes. When the values can be given dense indices (a
vocabulary, as libFM indices already are), it also proposes the
collision-free vocabulary signature; the mapping from raw ids to indices
then costs about 16 bytes per value on top (a hash table of int64 keys and
values), which the plan reports separately.
"""
from memrec_tf import models

VOCABULARY_BYTES_PER_VALUE = 16


def plan(cardinalities, embedding_dim, budget=None, compression=None, num_hashes=2):
    """A dict: the features, the budget and one entry per method that fits it.

    Args:
      cardinalities: distinct values per categorical feature.
      embedding_dim: d.
      budget: bytes for all embedding tables; or
      compression: full-table bytes / compression.
      num_hashes: k of the MEM-REC options.

    Raises:
      ValueError: no MEM-REC layer fits the budget.
    """
    cards = [int(c) for c in cardinalities]
    configs = models.budget_configs(embedding_dim, cards, budget=budget, compression=compression,
                                    num_hashes=num_hashes)
    if "memrec" not in configs:
        raise ValueError(f"the budget is too small for a MEM-REC layer with d={embedding_dim}, "
                         f"k={num_hashes}")
    vocab = sum(cards)
    methods = {}
    for name, config in configs.items():
        methods[name] = {"options": config.options, "bytes": config.bytes,
                         "compression": round(config.ratio, 2)}
    shared = dict(configs["memrec"].options)
    try:
        vocab_config = models.memrec_config(embedding_dim, vocabulary_size=vocab, budget=budget,
                                            compression=compression, num_hashes=num_hashes)
        options = dict(vocab_config.options, vocabulary_size=vocab)
        methods["memrec_vocabulary"] = {
            "options": options, "bytes": vocab_config.bytes,
            "compression": round(vocab_config.ratio, 2),
            "vocabulary_mapping_bytes": vocab * VOCABULARY_BYTES_PER_VALUE}
    except ValueError:
        pass
    return {"cardinalities": cards, "vocabulary_size": vocab, "embedding_dim": embedding_dim,
            "full_bytes": configs["memrec"].full_bytes, "budget_bytes": budget or int(
                configs["memrec"].full_bytes // compression),
            "recommended": {"method": "memrec", "options": shared}, "methods": methods}


def format_plan(p):
    """The plan as a text table."""
    lines = [f"{len(p['cardinalities'])} categorical features, {p['vocabulary_size']:,} values, "
             f"d={p['embedding_dim']}: full tables {p['full_bytes']:,} bytes, "
             f"budget {p['budget_bytes']:,} bytes",
             f"{'method':<20}{'bytes':>14}{'compression':>13}  options"]
    for name, m in p["methods"].items():
        options = ", ".join(f"{k}={v}" for k, v in m["options"].items())
        extra = (f" (+{m['vocabulary_mapping_bytes']:,} bytes of id->index mapping)"
                 if "vocabulary_mapping_bytes" in m else "")
        lines.append(f"{name:<20}{m['bytes']:>14,}{m['compression']:>12.1f}x  {options}{extra}")
    rec = p["recommended"]
    lines.append("recommended: MemRecEmbedding(" + ", ".join(
        f"{k}={v}" for k, v in rec["options"].items()) + ", salt_columns=True)")
    return "\n".join(lines)
