"""`memrec plan`: MEM-REC sizes for a byte budget, beside the other methods.

Every byte an embedding needs to serve is counted: its tables, as served in
`table_dtype` (`memrec_tf.sizing.tables`), and any id -> index mapping it
holds. The plan sizes every method to the same budget of such bytes with
`memrec_tf.sizing.budget_configs`, against float32 full tables.

Two regimes, reported apart:
  * raw ids (the `methods` of the plan): the model reads the ids of the
    data. The vocabulary signatures (`memrec_vocabulary`, with counts also
    `memrec_vocabulary_head`) then need an in-model mapping from raw ids to
    dense indices, an int64 key and an int64 index per value
    (`sizing.vocabulary_mapping_bytes`), which is part of their bytes: their
    tables get what the mapping leaves of the budget. The plan recommends
    the hashed shared layer (`memrec`), which needs no mapping, and points
    to int8 tables, which measured best at equal served bytes on Frappe and
    MovieLens-100K
    (BENCHMARKS.md, "Accuracy at equal served bytes, raw ids").
  * ids already mapped by a vocabulary layer (`vocabulary_layer`): when the
    model's input already comes from a `keras.layers.StringLookup` or
    `IntegerLookup` (which order their vocabulary by frequency), that
    mapping is common to every method, the full table included, and not
    counted; the vocabulary signatures get the whole budget. Given the
    training counts, the head-row configuration is proposed there.
"""
import numpy as np

from memrec_tf import sizing


def plan(cardinalities, embedding_dim, budget=None, compression=None, num_hashes=2,
         value_counts=None, table_dtype="float32"):
    """A dict: the features, the budget and one entry per method that fits it.

    Args:
      cardinalities: distinct values per categorical feature.
      embedding_dim: d.
      budget: bytes for all embedding tables and mappings; or
      compression: float32 full-table bytes / compression.
      num_hashes: k of the MEM-REC options.
      value_counts: optional training count of every value (all features,
        any order; sum(cardinalities) of them): adds the head-row
        configuration "memrec_vocabulary_head".
      table_dtype: the format the tables are served in ("float32",
        "bfloat16", "int8"); MEM-REC's weight table stays float32.

    Returns:
      {"cardinalities", "vocabulary_size", "embedding_dim", "table_dtype",
      "full_bytes", "budget_bytes", "recommended", "methods" (raw ids: every
      byte counted), "left_out" (method: why it does not fit),
      "vocabulary_layer" (ids already mapped: mapping common to all)}. Each
      method has "options", "bytes" (all of it), "table_bytes",
      "mapping_bytes" and "compression".

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
                                    num_hashes=num_hashes, table_dtype=table_dtype)
    if "memrec" not in configs:
        raise ValueError(f"the budget is too small for a MEM-REC layer with d={embedding_dim}, "
                         f"k={num_hashes}")
    full = configs["memrec"].full_bytes
    total = sizing.budget_bytes(full, budget, compression)
    methods = {name: _entry(config) for name, config in configs.items()}
    vocab = sum(cards)
    mapping = sizing.vocabulary_mapping_bytes(cards)
    left_out = {}
    vocabulary_layer = {}
    for name, head in (("memrec_vocabulary", False), ("memrec_vocabulary_head", True)):
        if head and value_counts is None:
            continue
        config = _vocabulary_config(embedding_dim, vocab, total - mapping, num_hashes,
                                    table_dtype, head)
        if config is None:
            left_out[name] = (f"its id->index mapping takes {mapping:,} of the "
                              f"{total:,} budget bytes, too few are left for its tables")
        else:
            methods[name] = _entry(config, mapping, head and value_counts)
        mapped = _vocabulary_config(embedding_dim, vocab, total, num_hashes, table_dtype, head)
        if mapped is not None:
            vocabulary_layer[name] = _entry(mapped, 0, head and value_counts)
    recommended = {"method": "memrec", "options": dict(configs["memrec"].options)}
    return {"cardinalities": cards, "vocabulary_size": vocab, "embedding_dim": embedding_dim,
            "table_dtype": table_dtype, "full_bytes": full, "budget_bytes": total,
            "recommended": recommended, "methods": methods, "left_out": left_out,
            "vocabulary_layer": vocabulary_layer}


def _vocabulary_config(embedding_dim, vocab, budget, num_hashes, table_dtype, head):
    """The vocabulary signature's config in `budget` bytes of tables (head:
    sizing.HEAD_FRACTION of its token rows as head rows), or None."""
    if budget <= 0:
        return None
    try:
        config = sizing.memrec_config(embedding_dim, vocabulary_size=vocab, budget=budget,
                                      num_hashes=num_hashes, table_dtype=table_dtype)
        if head:
            rows = sizing.head_rows(config.options["num_token_rows"], vocab)
            if rows < 1:
                return None
            config = sizing.memrec_config(embedding_dim, vocabulary_size=vocab, budget=budget,
                                          num_hashes=num_hashes, num_head_rows=rows,
                                          table_dtype=table_dtype)
    except ValueError:
        return None
    config.options["vocabulary_size"] = vocab
    return config


def _entry(config, mapping_bytes=0, counts=None):
    """A plan entry: options and bytes (tables + mapping) of a sized config."""
    every = config.bytes + mapping_bytes
    entry = {"options": dict(config.options), "bytes": every, "table_bytes": config.bytes,
             "mapping_bytes": mapping_bytes, "compression": round(config.full_bytes / every, 2)}
    if counts is not None and counts is not False:
        top = np.sort(counts)[::-1][:config.options["num_head_rows"]]
        occurrences = int(counts.sum())
        entry["head_share_of_occurrences"] = (round(float(top.sum()) / occurrences, 4)
                                              if occurrences else 0.0)
        entry["index_order"] = "by descending training count (memrec_tf.data.frequency_order)"
    return entry


def format_plan(p):
    """The plan as text tables: raw ids, then ids already mapped."""
    lines = [f"{len(p['cardinalities'])} categorical features, {p['vocabulary_size']:,} values, "
             f"d={p['embedding_dim']}: float32 full tables {p['full_bytes']:,} bytes, "
             f"budget {p['budget_bytes']:,} bytes (tables served as {p['table_dtype']})",
             "raw ids: every byte counted (tables + id->index mapping)",
             *_method_lines(p["methods"])]
    for name, why in p["left_out"].items():
        lines.append(f"{name:<24}{'':>14}{'':>13}  does not fit: {why}")
    rec = p["recommended"]
    lines.append("recommended: MemRecEmbedding(" + ", ".join(
        f"{k}={v}" for k, v in rec["options"].items()) + ", salt_columns=True)")
    if p["table_dtype"] == "float32":
        lines.append("  (served in 8 bits, --table-dtype int8, the same bytes hold about 3x the "
                     "token rows; it scored best at every budget on Frappe and MovieLens-100K, "
                     "BENCHMARKS.md)")
    if p["vocabulary_layer"]:
        lines += ["", "ids already mapped by a vocabulary layer (keras.layers.StringLookup / "
                      "IntegerLookup, frequency-ordered): that mapping is common to every "
                      "method and not counted here",
                  *_method_lines(p["vocabulary_layer"])]
    return "\n".join(lines)


def _method_lines(methods):
    lines = [f"{'method':<24}{'bytes':>14}{'compression':>13}  options"]
    for name, m in methods.items():
        options = ", ".join(f"{k}={v}" for k, v in m["options"].items())
        extra = (f" ({m['table_bytes']:,} of tables + {m['mapping_bytes']:,} of id->index "
                 "mapping)" if m["mapping_bytes"] else "")
        if "head_share_of_occurrences" in m:
            extra += (f"; the head values are {m['head_share_of_occurrences'] * 100:.1f}% of "
                      "training occurrences; index values by descending count")
        lines.append(f"{name:<24}{m['bytes']:>14,}{m['compression']:>12.1f}x  {options}{extra}")
    return lines
