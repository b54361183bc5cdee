"""Serving latency of one DLRM exported three ways: full tables, MEM-REC core, MEM-REC fused.

Builds one DLRM (dense features plus 26 categorical features) twice: with
full embedding tables and with MEM-REC at a compression of the full
tables. Exports the full-table model, and the MEM-REC model both with
mode="core" (built-in ops only: what a stock TensorFlow Serving runs) and
mode="fused" (the MemRecLookup op). Each export is loaded with
tf.saved_model.load and called through its `serving_default` signature;
batches of each size are timed in interleaved rounds, every variant once
per round, and the table gives p50 and p99 of the single-call latencies:

    python benchmarks/bench_serving.py             # about 3 minutes
    python benchmarks/bench_serving.py --quick     # under a minute, not evidence
    python benchmarks/bench_serving.py --other-core /tmp/core_before.py   # an older core.py too

Variants are "<embedding>/<mode>[/<table_dtype>]"; --variants picks them.
Token tables stored in fewer bits (memrec_tf.ops.quantize: "int8",
"bfloat16") are exported through memrec_tf.export(..., table_dtype=...),
e.g. --variants full,memrec/core,memrec/core/int8,memrec/fused/int8.
"""
import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_lookup import load_core  # noqa: E402
from common import cpu_name, method_config  # noqa: E402

import memrec_tf  # noqa: E402
from memrec_tf import models, ops  # noqa: E402
from memrec_tf.features import FeatureSpec  # noqa: E402
from memrec_tf.ops import quantize  # noqa: E402

NUM_CATEGORICAL = 26
NUM_DENSE = 13
DEFAULT_VARIANTS = ("full", "memrec/core", "memrec/fused")
BASELINE = "full"
OTHER_CORE = "memrec/other-core"  # the core export built with --other-core's core.py
POOL = 8  # distinct request batches per size, cycled through
# Criteo-like spread of cardinalities: a few large features, many small.
_CARDINALITY_SHARES = (0.26, 0.20, 0.12, 0.08, 0.06, 0.05, 0.04, 0.035, 0.03, 0.025, 0.02,
                       0.015, 0.012, 0.01, 0.008, 0.006, 0.005, 0.004, 0.003, 0.002,
                       0.0015, 0.001, 0.0008, 0.0005, 0.0003, 0.0002)


def cardinalities(full_rows):
    """26 cardinalities summing to about `full_rows`, each at least 4."""
    shares = np.asarray(_CARDINALITY_SHARES) / sum(_CARDINALITY_SHARES)
    return [max(4, int(full_rows * s)) for s in shares]


def parse_variant(text):
    """(embedding, mode, table_dtype) of "full", "memrec/core", "memrec/fused/int8"."""
    parts = text.strip().split("/")
    if parts[0] == "full" and len(parts) == 1:
        return "full", "core", "float32"
    if text.strip() == OTHER_CORE:
        return "memrec", "core", "float32"
    if parts[0] != "memrec" or len(parts) not in (2, 3) or parts[1] not in ("core", "fused"):
        raise ValueError(f"a variant is 'full' or 'memrec/<core|fused>[/<table_dtype>]', "
                         f"got {text!r}")
    return "memrec", parts[1], quantize.check_table_dtype(parts[2] if len(parts) == 3
                                                          else "float32")


def build(embedding, args, cards):
    """An untrained DLRM whose embedding is the full tables or MEM-REC."""
    vocabulary = sum(cards)
    method = "full" if embedding == "full" else args.memrec_method
    config = method_config(method, vocabulary, cards, args.compression, args.dim)
    kind, options, nbytes = config["embedding"], config["options"], config["bytes"]
    spec = FeatureSpec.of(num_dense=NUM_DENSE, cardinalities=cards,
                          vocabulary_size=vocabulary)
    tf.keras.utils.set_random_seed(args.seed)
    model = models.build_model("dlrm", spec, embedding=kind, embedding_options=options,
                               embedding_dim=args.dim, seed=args.seed,
                               top_mlp=tuple(args.top_mlp))
    return model, nbytes, options


def export(model, path, mode, table_dtype, other_core=None):
    if other_core is not None:  # the core export traced with another core.py's lookup
        from memrec_tf.ops import core  # pylint: disable=g-import-not-at-top

        saved = core.lookup
        core.lookup = other_core.lookup
        try:
            return export(model, path, mode, table_dtype)
        finally:
            core.lookup = saved
    return memrec_tf.export(model, path, mode=mode, table_dtype=table_dtype)


def requests(batch, cards, rng):
    """POOL request batches of `batch` rows: dense floats, global categorical ids."""
    offsets = np.concatenate([[0], np.cumsum(cards)[:-1]])
    pool = []
    for _ in range(POOL):
        local = (rng.random((batch, len(cards))) * np.asarray(cards)).astype(np.int64)
        pool.append({"dense": tf.constant(rng.standard_normal((batch, NUM_DENSE)), tf.float32),
                     "categorical": tf.constant(local + offsets, tf.int64)})
    return pool


def time_variants(serving, batches, pools, rounds, calls):
    """{(batch, variant): [ms of every call]}, variants interleaved in each round."""
    samples = {(b, name): [] for b in batches for name in serving}
    for b in batches:  # warm-up: the first calls build and optimise the graphs
        for fn in serving.values():
            for request in pools[b]:
                fn(**request)
    for r in range(rounds):
        for b in batches:
            for name, fn in serving.items():
                for c in range(calls):
                    request = pools[b][(r * calls + c) % POOL]
                    start = time.perf_counter()
                    fn(**request)
                    samples[(b, name)].append((time.perf_counter() - start) * 1e3)
    return samples


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help="comma list: full, memrec/core, memrec/fused, "
                             "memrec/<mode>/<table_dtype> (int8, bfloat16)")
    parser.add_argument("--batches", default="1,64,1024")
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--full-rows", type=int, default=4_000_000,
                        help="rows of the full tables, all 26 features together")
    parser.add_argument("--compression", type=float, default=16.0,
                        help="MEM-REC's bytes are the full tables' over this")
    parser.add_argument("--memrec-method", default="memrec-vocab",
                        choices=("memrec-vocab", "memrec-paper-k2"),
                        help="memrec-vocab: collision-free signatures of the global ids; "
                             "memrec-paper-k2: salted random hashes")
    parser.add_argument("--top-mlp", type=int, nargs="+", default=[64, 32])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--calls", type=int, default=10, help="calls per variant and round")
    parser.add_argument("--quick", action="store_true",
                        help="small tables, few rounds: a smoke run, not evidence")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--other-core", metavar="FILE",
                        help="also export the MEM-REC model in core mode with core.lookup "
                             f"of this core.py (another version), as {OTHER_CORE!r}")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.full_rows, args.rounds, args.calls = min(args.full_rows, 400_000), 5, 5
    try:
        variants = {text.strip(): parse_variant(text) for text in args.variants.split(",")}
    except ValueError as e:
        parser.error(str(e))
    batches = [int(b) for b in args.batches.split(",")]
    if any(mode == "fused" for _, mode, _ in variants.values()):
        ops.load_library()  # the fused exports' MemRecLookup op

    other = None
    if args.other_core:
        other = load_core(args.other_core)
        variants[OTHER_CORE] = parse_variant(OTHER_CORE)
    cards = cardinalities(args.full_rows)
    info, serving, keep = {}, {}, []
    with tempfile.TemporaryDirectory(prefix="bench_serving_") as root:
        for embedding in sorted({e for e, _, _ in variants.values()}):
            model, nbytes, options = build(embedding, args, cards)
            for name, (e, mode, table_dtype) in variants.items():
                if e != embedding:
                    continue
                path = export(model, os.path.join(root, name.replace("/", "_")), mode,
                              table_dtype, other if name == OTHER_CORE else None)
                info[name] = dict(table_bytes=nbytes, options=options)
                loaded = tf.saved_model.load(path)
                keep.append(loaded)
                serving[name] = loaded.signatures["serving_default"]
            del model
            tf.keras.backend.clear_session()
            gc.collect()
        rng = np.random.default_rng(args.seed)
        pools = {b: requests(b, cards, rng) for b in batches}
        load_start = os.getloadavg()[0]
        samples = time_variants(serving, batches, pools, args.rounds, args.calls)
    load_end = os.getloadavg()[0]

    def pct(v, q):
        return float(np.percentile(v, q))

    print(f"# bench_serving: DLRM, {NUM_DENSE} dense + {NUM_CATEGORICAL} categorical "
          f"features, d={args.dim}, full tables {sum(cards):,} rows; MEM-REC "
          f"{args.memrec_method} at 1/{args.compression:g} of their bytes "
          f"({json.dumps(info.get('memrec/core', next(iter(info.values())))['options'])})")
    print(f"# {cpu_name()}, {os.cpu_count()} cores, TensorFlow {tf.__version__}; "
          f"{args.rounds} interleaved rounds x {args.calls} calls per variant and batch; "
          f"load average {load_start:.1f} -> {load_end:.1f}")
    print(f"| {'batch':>5} | {'variant':<20} | {'p50 ms':>8} | {'p99 ms':>8} | "
          f"{'p50 / full':>10} |")
    print(f"|{'-' * 7}|{'-' * 22}|{'-' * 10}|{'-' * 10}|{'-' * 12}|")
    results = []
    for b in batches:
        base = (statistics.median(samples[(b, BASELINE)])
                if (b, BASELINE) in samples else None)
        for name in serving:
            v = samples[(b, name)]
            p50, p99 = pct(v, 50), pct(v, 99)
            ratio = f"{p50 / base:9.2f}x" if base else f"{'-':>10}"
            print(f"| {b:>5} | {name:<20} | {p50:>8.3f} | {p99:>8.3f} | {ratio} |")
            results.append(dict(batch=b, variant=name, p50_ms=p50, p99_ms=p99,
                                calls=len(v)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "cardinalities": cards, "variants": info,
                       "results": results, "cpu": cpu_name(), "cores": os.cpu_count(),
                       "load_average": [load_start, load_end],
                       "tensorflow": tf.__version__}, f, indent=2)


if __name__ == "__main__":
    main()
