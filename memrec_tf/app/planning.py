"""`memrec plan`: MEM-REC sizes for a byte budget, beside the other methods.

The plan sizes every embedding method to the same budget (all tables
counted) with `memrec_tf.sizing.budget_configs`, and adds the MEM-REC
options a layer takes. When the values can be given dense indices (a
vocabulary, as libFM indices already are), it also proposes the
collision-free vocabulary signature; the mapping from raw ids to indices
then costs an int64 key and an int64 index per value on top
(`sizing.vocabulary_mapping_bytes`), which the plan reports separately.

Given the training counts of the values (`memrec plan --data FILE` counts
them), it also proposes frequency-aware head rows: the vocabulary signature
with a quarter of the token rows owned by the most frequent values
(`num_head_rows`), and reports what share of the training occurrences those
values are. That configuration measured best or tied-best of every MEM-REC
variant from /4 to /16 of the full bytes on Frappe and MovieLens-100K
(BENCHMARKS.md, accuracy against memory), so the plan recommends it there
when the counts are known; below /16 it recommends the hashed shared layer,
which needs no id->index mapping.
"""
import numpy as np

from memrec_tf import sizing

# Recommend head rows down to this compression (the measured range).
HEAD_MAX_COMPRESSION = 16.0


def plan(cardinalities, embedding_dim, budget=None, compression=None, num_hashes=2,
         value_counts=None):
    """A dict: the features, the budget and one entry per method that fits it.

    Args:
      cardinalities: distinct values per categorical feature.
      embedding_dim: d.
      budget: bytes for all embedding tables; or
      compression: full-table bytes / compression.
      num_hashes: k of the MEM-REC options.
      value_counts: optional training count of every value (all features,
        any order; sum(cardinalities) of them): adds the head-row
        configuration "memrec_vocabulary_head".

    Raises:
      ValueError: no MEM-REC layer fits the budget, or value_counts does not
        hold one count per value.
    """
    cards = [int(c) for c in cardinalities]
    if value_counts is not None:
        value_counts = np.asarray(value_counts, np.int64).reshape(-1)
        if value_counts.size != sum(cards):
            raise ValueError(f"value_counts has {value_counts.size} counts; the cardinalities "
                             f"sum to {sum(cards)}")
    configs = sizing.budget_configs(embedding_dim, cards, budget=budget, compression=compression,
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
        vocab_config = sizing.memrec_config(embedding_dim, vocabulary_size=vocab, budget=budget,
                                            compression=compression, num_hashes=num_hashes)
        options = dict(vocab_config.options, vocabulary_size=vocab)
        methods["memrec_vocabulary"] = {
            "options": options, "bytes": vocab_config.bytes,
            "compression": round(vocab_config.ratio, 2),
            "vocabulary_mapping_bytes": sizing.vocabulary_mapping_bytes(cards)}
    except ValueError:
        pass
    if value_counts is not None and "memrec_vocabulary" in methods:
        head = _head_method(value_counts, cards, embedding_dim, budget, compression, num_hashes,
                            methods["memrec_vocabulary"]["options"]["num_token_rows"])
        if head is not None:
            methods["memrec_vocabulary_head"] = head
    recommended = {"method": "memrec", "options": shared}
    requested = compression if compression else configs["memrec"].full_bytes / budget
    if "memrec_vocabulary_head" in methods and requested <= HEAD_MAX_COMPRESSION:
        recommended = {"method": "memrec_vocabulary_head",
                       "options": methods["memrec_vocabulary_head"]["options"]}
    return {"cardinalities": cards, "vocabulary_size": vocab, "embedding_dim": embedding_dim,
            "full_bytes": configs["memrec"].full_bytes, "budget_bytes": budget or int(
                configs["memrec"].full_bytes // compression),
            "recommended": recommended, "methods": methods}


def _head_method(counts, cards, embedding_dim, budget, compression, num_hashes, token_rows):
    """The vocabulary signature with sizing.HEAD_FRACTION of its token rows as head rows."""
    vocab = sum(cards)
    head = sizing.head_rows(token_rows, vocab)
    if head < 1:
        return None
    try:
        config = sizing.memrec_config(embedding_dim, vocabulary_size=vocab, budget=budget,
                                      compression=compression, num_hashes=num_hashes,
                                      num_head_rows=head)
    except ValueError:
        return None
    top = np.sort(counts)[::-1][:head]
    total = int(counts.sum())
    return {"options": dict(config.options, vocabulary_size=vocab), "bytes": config.bytes,
            "compression": round(config.ratio, 2),
            "vocabulary_mapping_bytes": sizing.vocabulary_mapping_bytes(cards),
            "head_share_of_occurrences": round(float(top.sum()) / total, 4) if total else 0.0,
            "index_order": "by descending training count (memrec_tf.data.frequency_order)"}


def format_plan(p):
    """The plan as a text table."""
    lines = [f"{len(p['cardinalities'])} categorical features, {p['vocabulary_size']:,} values, "
             f"d={p['embedding_dim']}: full tables {p['full_bytes']:,} bytes, "
             f"budget {p['budget_bytes']:,} bytes",
             f"{'method':<24}{'bytes':>14}{'compression':>13}  options"]
    for name, m in p["methods"].items():
        options = ", ".join(f"{k}={v}" for k, v in m["options"].items())
        extra = (f" (+{m['vocabulary_mapping_bytes']:,} bytes of id->index mapping)"
                 if "vocabulary_mapping_bytes" in m else "")
        if "head_share_of_occurrences" in m:
            extra += (f"; the head values are {m['head_share_of_occurrences'] * 100:.1f}% of "
                      "training occurrences; index values by descending count")
        lines.append(f"{name:<24}{m['bytes']:>14,}{m['compression']:>12.1f}x  {options}{extra}")
    rec = p["recommended"]
    tail = ", salt_columns=True)" if rec["method"] == "memrec" else ")"
    lines.append("recommended: MemRecEmbedding(" + ", ".join(
        f"{k}={v}" for k, v in rec["options"].items()) + tail)
    if rec["method"] != "memrec":
        lines.append(f"  (for dense indices ordered by training count: `memrec train --embedding "
                     f"{rec['method']}` counts the training file and maps raw ids to them inside "
                     "the model; in Python, memrec_tf.data.frequency_order)")
    return "\n".join(lines)
