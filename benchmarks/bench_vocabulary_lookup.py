"""What the in-model id mapping costs: VocabularyLookup beside the fused lookup it feeds.

`memrec train --embedding memrec_vocabulary*` puts a `VocabularyLookup` in
front of the shared MEM-REC layer: a binary search per id over its
feature's sorted keys. This times it, compiled (`tf.function`), against the
fused forward of the same batch, both side by side in interleaved rounds
(medians), for several numbers of values per feature:

    python benchmarks/bench_vocabulary_lookup.py              # 4096 x 26 ids, d=16
    python benchmarks/bench_vocabulary_lookup.py --values 10000 --rounds 3   # quick
"""
import argparse
import os
import statistics
import sys

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import cpu_name, interleaved_times, write_json  # noqa: E402

from memrec_tf import layers  # noqa: E402
from memrec_tf.layers import MemRecEmbedding  # noqa: E402


def measure(values, args, rng):
    """Median ms of the mapping and of the fused forward for `values` per feature."""
    counted = []
    for _ in range(args.features):
        keys = np.unique(rng.integers(-2**62, 2**62, values))
        counted.append((keys, rng.zipf(1.2, len(keys)).astype(np.int64)))
    keys, indices, oov, _ = layers.frequency_index(counted)
    lookup = layers.VocabularyLookup([len(k) for k, _ in counted])
    lookup.set_vocabulary(keys, indices, oov)
    embedding = MemRecEmbedding(args.dim, args.m, num_hashes=2, num_weight_rows=args.m // 8,
                                vocabulary_size=lookup.vocabulary_size,
                                num_head_rows=args.m // 4, implementation="fused")
    # Ids drawn from the known values (Zipf over each feature's keys) and 5% unseen.
    cols = []
    for k, _ in counted:
        pick = np.minimum(rng.zipf(1.2, args.batch) - 1, len(k) - 1)
        col = k[pick]
        unseen = rng.random(args.batch) < 0.05
        col[unseen] = rng.integers(-2**62, 2**62, int(unseen.sum()))
        cols.append(col)
    ids = tf.constant(np.stack(cols, axis=1))
    mapped = lookup(ids)
    embedding(mapped)  # builds

    map_fn = tf.function(lambda x: lookup(x))
    fwd_fn = tf.function(lambda x: embedding(x))
    both_fn = tf.function(lambda x: embedding(lookup(x)))
    variants = {"mapping": lambda: map_fn(ids).numpy(),
                "fused forward": lambda: fwd_fn(mapped).numpy(),
                "mapping + forward": lambda: both_fn(ids).numpy()}
    samples = interleaved_times(variants, args.rounds, args.repeats)
    return {name: statistics.median(s) for name, s in samples.items()}, lookup.mapping_bytes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--features", type=int, default=26)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--m", type=int, default=2 ** 16, help="token rows")
    parser.add_argument("--values", default="10000,100000,1000000",
                        help="values per feature, comma-separated")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    print(f"{cpu_name()}; {args.batch} x {args.features} ids, d={args.dim}, m={args.m}; "
          f"median of {args.rounds} rounds x {args.repeats}")
    print(f"{'values/feature':>15}{'mapping MB':>12}{'mapping ms':>12}{'forward ms':>12}"
          f"{'both ms':>10}{'mapping/forward':>17}")
    rows = []
    for values in (int(v) for v in args.values.split(",")):
        times, mapping_bytes = measure(values, args, rng)
        ratio = times["mapping"] / times["fused forward"]
        print(f"{values:>15,}{mapping_bytes / 1e6:>12.1f}{times['mapping']:>12.2f}"
              f"{times['fused forward']:>12.2f}{times['mapping + forward']:>10.2f}"
              f"{ratio:>16.2f}x", flush=True)
        rows.append({"values_per_feature": values, "mapping_bytes": mapping_bytes,
                     **{f"{k} ms": v for k, v in times.items()}, "mapping/forward": ratio})
    if args.json:
        write_json(args.json, {"args": vars(args), "cpu": cpu_name(), "rows": rows})


if __name__ == "__main__":
    main()
