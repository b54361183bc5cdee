"""Lookup speed: the fused MEM-REC op against the built-in-ops path and a full table.

Prints one table from one run, every variant timed side by side (interleaved
rounds, medians), and the ratios the targets are stated in:

    python benchmarks/bench_lookup.py            # 4096 x 26 ids, d=64, k=2, m=2^16, 40M-row full table
    python benchmarks/bench_lookup.py --full-rows 4000000 --rounds 5   # quick
    python benchmarks/bench_lookup.py --variants "fused forward,core forward"
    git show 26b4b59:memrec_tf/ops/core.py > /tmp/core_before.py
    python benchmarks/bench_lookup.py --other-core /tmp/core_before.py   # against an older core

The full table is float32 [full_rows, d]: 40M x 64 is 10.24 GB of memory.

The fused forward also reads the token table stored for serving
(memrec_tf/ops/quantize.py): "fused forward int8" and "fused forward
bfloat16" time the same lookup on the table stored in that format, beside
"fused forward" on float32 (--table-dtypes picks them; the ratio lines give
the speed-up over float32 rows). The full table is built only when a
full-table variant is timed (the ids are drawn from [0, full_rows) either way):

    python benchmarks/bench_lookup.py --m 1048576 \
        --variants "fused forward,fused forward bfloat16,fused forward int8"

The fused op's gradients of the (small) MEM-REC tables are dense tensors by
default (`memrec_tf.ops.gradient_format`); the "(sparse)" variant forces
IndexedSlices, the form large tables get. "fused forward+update sgd" and
"... adagrad" run the forward and backward of a layer with an embedding
optimizer (`memrec_tf.optimizers`): the token table's gradient applied
inside the gradient kernel, only the weight table's returned:

    python benchmarks/bench_lookup.py --variants "fused forward,fused forward+backward,fused forward+update sgd,fused forward+update adagrad"
"""
import argparse
import importlib.util
import json
import os
import statistics
import sys

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import cpu_name, interleaved_times  # noqa: E402

from memrec_tf import ops, optimizers
from memrec_tf.ops import core, quantize, updates
from memrec_tf.ops.signature import Signature


# Speed-up targets of the fused forward from stored rows over float32 rows:
# int8 rows are a quarter of float32's bytes (plus a scale), and the forward
# is bound by its random row reads. bfloat16 has no target, only its number.
STORED_SPEEDUP_TARGET = {"int8": 1.3}


def load_core(path):
    """A core.py from elsewhere (e.g. `git show <commit>:memrec_tf/ops/core.py`) as a module."""
    spec = importlib.util.spec_from_file_location("other_core", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _needs_full_table(wanted):
    return wanted is None or any(name.startswith("full-table") for name in wanted)


def build_cases(args, wanted=None):
    """The timed variants by name (only those in `wanted`, when given, are built)."""
    rng = np.random.default_rng(args.seed)
    n = args.batch * args.features
    ids = tf.constant(rng.integers(0, args.full_rows, size=n), tf.int64)
    grad = tf.constant(rng.standard_normal((n, args.dim)), tf.float32)
    signature = Signature(num_hashes=args.k, num_weight_hashes=1, seed=1)
    token = tf.Variable(tf.random.uniform([args.m, args.dim], -0.05, 0.05), name="token")
    weight = tf.Variable(tf.ones([args.m, 1]), name="weight")
    no_splits = tf.zeros([0], tf.int64)
    no_weights = tf.zeros([0], tf.float32)
    full_rows = args.full_rows if _needs_full_table(wanted) else 1
    full = tf.Variable(tf.zeros([full_rows, args.dim]), name="full")
    # Filled with random values a slice at a time: a table of zeros may sit
    # on the kernel's shared zero page, and its "random" reads would all hit
    # one cached page.
    chunk = 1 << 20
    for start in range(0, full_rows, chunk):
        rows = min(chunk, full_rows - start)
        full.scatter_update(tf.IndexedSlices(
            tf.random.uniform([rows, args.dim], -0.05, 0.05),
            tf.range(start, start + rows, dtype=tf.int64)))

    other = load_core(args.other_core).lookup if args.other_core else None

    def memrec(path):
        fn = {"fused": ops.lookup, "core": core.lookup, "other": other}[path]
        return lambda: fn(ids, no_splits, no_weights, token, weight, signature,
                          combiner="none")

    def memrec_stored(table_dtype, lookup=ops.lookup):
        # The token table as served from `table_dtype` rows (weights stay float32).
        values, scales = quantize.quantize_rows(token, table_dtype)
        values = tf.Variable(values, trainable=False, name=f"token_{table_dtype}")
        scales = None if scales is None else tf.Variable(scales, name="token_scales")
        return lambda: lookup(ids, no_splits, no_weights, values, weight, signature,
                              combiner="none", token_scales=scales)

    def forward(lookup):
        return tf.function(lookup)

    def forward_backward(lookup, variables, gradient="auto"):
        @tf.function
        def step():
            with tf.GradientTape() as tape:
                out = lookup()
                loss = tf.reduce_sum(out * grad)
            # Materialise IndexedSlices' values and indices, as an optimizer
            # would; small tables' fused gradients are dense tensors.
            return [(g.values, g.indices) if isinstance(g, tf.IndexedSlices) else g
                    for g in tape.gradient(loss, variables)]

        def run():
            with ops.gradient_format(gradient):  # read when step is traced
                return step()
        return run

    def forward_update(optimizer):
        # The forward and backward with the token table updated inside the
        # gradient kernel (an embedding optimizer), on a copy of the table;
        # the weight table's gradient is returned, as for the model's optimizer.
        table = tf.Variable(token.read_value(), trainable=False, name=f"token_{optimizer.name}")
        slots = [tf.Variable(tf.fill(table.shape, 0.1), trainable=False)
                 for _ in optimizer.slot_names]
        iterations = tf.Variable(0, dtype=tf.int64, trainable=False)

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                out = updates.lookup_and_update(ids, no_splits, no_weights, table,
                                                tf.convert_to_tensor(weight), signature,
                                                optimizer, slots, iterations, "none", "scalar",
                                                fused_op=True)
                loss = tf.reduce_sum(out * grad)
            return tape.gradient(loss, [weight])
        return step

    full_lookup = lambda: tf.nn.embedding_lookup(full, ids)  # noqa: E731
    # Reference, not a target: one row per id from a table of the token
    # table's size (m x d), the cost of a single cached row per id.
    small_ids = tf.constant(rng.integers(0, args.m, size=n), tf.int64)
    # Its own copy of the token table: a gather from a variable switches it to
    # copy-on-read, after which every read of the whole variable (as the
    # MEM-REC ops' inputs) would copy it.
    small = tf.Variable(token.read_value(), name="small")
    small_lookup = lambda: tf.nn.embedding_lookup(small, small_ids)  # noqa: E731
    stored = {f"fused forward {name}": (lambda name=name: forward(memrec_stored(name)))
              for name in args.table_dtypes if name != "float32"}
    stored.update({f"core forward {name} table":
                   (lambda name=name: forward(memrec_stored(name, core.lookup)))
                   for name in args.table_dtypes if name != "float32"})
    stored = {name: make() for name, make in stored.items()
              if wanted is None or name in wanted}
    return {
        "fused forward": forward(memrec("fused")),
        **stored,
        "fused forward+backward": forward_backward(memrec("fused"), [token, weight]),
        "fused forward+backward (sparse)": forward_backward(memrec("fused"), [token, weight],
                                                            gradient="sparse"),
        "fused forward+update sgd": forward_update(optimizers.SGD(1e-4)),
        "fused forward+update adagrad": forward_update(optimizers.Adagrad(1e-4)),
        "core forward": forward(memrec("core")),
        "core forward+backward": forward_backward(memrec("core"), [token, weight]),
        **({"other core forward": forward(memrec("other")),
            "other core forward+backward": forward_backward(memrec("other"), [token, weight])}
           if args.other_core else {}),
        "full-table forward": forward(full_lookup),
        "full-table forward+backward": forward_backward(full_lookup, [full]),
        "m-row table forward (reference)": forward(small_lookup),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--features", type=int, default=26)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--m", type=int, default=2 ** 16)
    parser.add_argument("--full-rows", type=int, default=40_000_000,
                        help="rows of the full table; the ids are drawn from [0, full_rows)")
    parser.add_argument("--rounds", type=int, default=15,
                        help="interleaved rounds; each variant runs --repeats times a round")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", default=None,
                        help="comma list of variants to time (default: all); ratios need "
                             "both of their variants")
    parser.add_argument("--table-dtypes", default="float32,bfloat16,int8",
                        help="comma list of token-table formats of the fused forward "
                             f"({', '.join(quantize.TABLE_DTYPES)}); float32 is 'fused forward'")
    parser.add_argument("--other-core", metavar="FILE",
                        help="also time core.lookup of this core.py (another version) as "
                             "'other core forward' and 'other core forward+backward'")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    args.table_dtypes = [quantize.check_table_dtype(name.strip())
                         for name in args.table_dtypes.split(",") if name.strip()]

    available, reason = ops.is_available()
    if not available:
        sys.exit(f"bench_lookup: the fused op is unavailable: {reason}")
    wanted = [v.strip() for v in args.variants.split(",") if v.strip()] \
        if args.variants else None
    cases = build_cases(args, wanted)
    if wanted:
        unknown = [v for v in wanted if v not in cases]
        if unknown:
            parser.error(f"unknown variant(s) {unknown}; have {list(cases)}")
        cases = {name: cases[name] for name in wanted}
    samples = interleaved_times(cases, args.rounds, args.repeats, warmup=3)
    median = {name: statistics.median(v) for name, v in samples.items()}

    full = f"full table {args.full_rows:,} x {args.dim} float32" \
        if _needs_full_table(wanted) else f"ids in [0, {args.full_rows:,}), no full table"
    print(f"# bench_lookup: {args.batch} x {args.features} ids, d={args.dim}, k={args.k}, "
          f"m={args.m}, {full}")
    print(f"# {cpu_name()}, {os.cpu_count()} cores, TensorFlow {tf.__version__}; "
          f"median of {args.rounds} rounds x {args.repeats}")
    print(f"| {'variant':<33} | {'median ms':>10} | {'min ms':>8} | {'max ms':>8} |")
    print(f"|{'-' * 35}|{'-' * 12}|{'-' * 10}|{'-' * 10}|")
    for name in cases:
        v = samples[name]
        print(f"| {name:<33} | {median[name]:>10.2f} | {min(v):>8.2f} | {max(v):>8.2f} |")
    pairs = {
        **{f"fused fwd float32 / {name} rows " + (
            f"(target >= {STORED_SPEEDUP_TARGET[name]})" if name in STORED_SPEEDUP_TARGET
            else "(no target)"): ("fused forward", f"fused forward {name}")
           for name in args.table_dtypes if name != "float32"},
        "full fwd / fused fwd (target >= 3.4)": ("full-table forward", "fused forward"),
        "full fwd+bwd / fused fwd+bwd (target >= 2)":
            ("full-table forward+backward", "fused forward+backward"),
        "fused fwd+bwd / fused fwd (target <= 2)":
            ("fused forward+backward", "fused forward"),
        "core fwd / fused fwd (target <= 1.5)": ("core forward", "fused forward"),
        "fused fwd+update sgd / fused fwd+bwd (no target)":
            ("fused forward+update sgd", "fused forward+backward"),
        "fused fwd+update adagrad / fused fwd+bwd (no target)":
            ("fused forward+update adagrad", "fused forward+backward"),
        "core fwd+bwd / fused fwd+bwd (no target)":
            ("core forward+backward", "fused forward+backward"),
        **{f"core {name} fwd / core float32 fwd (no target)":
           (f"core forward {name} table", "core forward")
           for name in args.table_dtypes if name != "float32"},
        "other core fwd / fused fwd": ("other core forward", "fused forward"),
        "other core fwd+bwd / fused fwd+bwd":
            ("other core forward+backward", "fused forward+backward"),
    }
    ratios = {name: median[a] / median[b] for name, (a, b) in pairs.items()
              if a in median and b in median}
    print()
    for name, value in ratios.items():
        print(f"{name:<46} {value:6.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "median_ms": median, "ratios": ratios,
                       "cpu": cpu_name(), "cores": os.cpu_count(),
                       "tensorflow": tf.__version__}, f, indent=2)


if __name__ == "__main__":
    main()
