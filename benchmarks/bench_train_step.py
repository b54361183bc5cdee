"""One training step of an embedding alone: forward, a mean-square loss,
backward and the optimizer's apply.

Prints one table from one run: for each full-table size, id distribution and
optimizer, every variant is timed side by side (interleaved rounds, medians):

* raw:    a full table as a tf.Variable, tf.nn.embedding_lookup, and the
          cheapest correct sparse apply TensorFlow offers (SGD:
          ResourceScatterSub; Adagrad: duplicates summed, then
          ResourceSparseApplyAdagradV2; Adam: duplicates summed, then the
          touched rows' moments and values updated with gather/scatter ops).
* keras:  keras.layers.Embedding with the Keras optimizer.
* fused:  MemRecEmbedding(implementation="fused") with the Keras optimizer.
* core:   MemRecEmbedding(implementation="core") with the Keras optimizer.
* update: MemRecEmbedding(implementation="fused", embedding_optimizer=...)
          with the optimizer of the same name: the token table updated
          inside the gradient kernel, the weight table by the Keras
          optimizer.
* --breakdown: a group of its own, timed after the table: the fused
          layer's step (Keras optimizer), its forward alone, its step
          without the apply ("no apply": forward, loss, backward, gradients
          materialised), the optimizer's apply alone (fixed dense
          gradients) and the loss alone: what the step spends where.
* fused sparse: the fused layer with its gradients forced to IndexedSlices
          (`memrec_tf.ops.gradient_format("sparse")`), for comparison with
          the dense gradients that small tables get by default.

    python benchmarks/bench_train_step.py --rows 1000000    # ~5 minutes on 2 cores
    python benchmarks/bench_train_step.py --rows 10000000   # ~5 minutes, 11 GiB peak
    python benchmarks/bench_train_step.py --quick           # 1M rows, uniform, under a minute
    python benchmarks/bench_train_step.py --plot-only --plot benchmarks/results/train_step.png

Not all of a case's memory comes back after it (the 10M cases after the 1M
ones, and the plot's 10M size after the smaller ones, passed 11 GiB in one
process), so on a machine with little memory run each row count in its own
process, as above.

A 10M x 64 float32 table is 2.4 GiB; Keras' Adam holds two more of its size
and makes table-sized temporaries, so the raw and Keras variants of one case
share the table (and the raw Adagrad/Adam the Keras optimizer's slots): only
timing, not the trained values, is compared. Keras variants whose estimated
peak (KERAS_PEAK_TABLES) exceeds --memory-budget-gib are left out.
"""
import argparse
import gc
import json
import os
import statistics
import sys

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import cpu_name, interleaved_times, write_json  # noqa: E402

import memrec_tf  # noqa: E402
from memrec_tf.layers.memrec_embedding import keras  # noqa: E402

OPTIMIZERS = ("sgd", "adagrad", "adam")
LEARNING_RATE = 0.01
ADAGRAD_INITIAL = 0.1
EPSILON = 1e-7
ZIPF_EXPONENT = 1.05
# Peak memory of the Keras variant's step, in tables of its size: Keras 3's
# Adagrad and Adam densify the gradient and make table-sized temporaries
# (Adam at 10M x 64 peaked at 22.1 GB, 8.6 tables; Adagrad passed 11 GB;
# a run with SGD, the raw variants and MEM-REC passed 11 GB too).
KERAS_PEAK_TABLES = {"sgd": 5, "adagrad": 6, "adam": 9}


def make_ids(rng, rows, n, distribution):
    """n ids in [0, rows): uniform, or Zipf(1.05) ranks scattered over the rows."""
    if distribution == "uniform":
        return rng.integers(0, rows, size=n)
    weights = np.arange(1, rows + 1, dtype=np.float64) ** -ZIPF_EXPONENT
    cdf = np.cumsum(weights)
    ranks = np.searchsorted(cdf, rng.uniform(0, cdf[-1], size=n))
    # Hot ranks land on scattered rows, not the first cache lines.
    return (ranks * 2654435761) % rows


def make_optimizer(name):
    if name == "sgd":
        return keras.optimizers.SGD(LEARNING_RATE)
    if name == "adagrad":
        return keras.optimizers.Adagrad(LEARNING_RATE, initial_accumulator_value=ADAGRAD_INITIAL,
                                        epsilon=EPSILON)
    return keras.optimizers.Adam(LEARNING_RATE, epsilon=EPSILON)


def unique_sum(grad):
    """(summed values, distinct rows) of an IndexedSlices with repeated rows."""
    rows, position = tf.unique(grad.indices, out_idx=tf.int64)
    return tf.math.unsorted_segment_sum(grad.values, position, tf.size(rows)), rows


def raw_apply(name, table, slots, grad, step):
    """The cheapest correct sparse apply of `name` to a tf.Variable."""
    lr = tf.constant(LEARNING_RATE, tf.float32)
    if name == "sgd":  # ResourceScatterSub adds repeated rows
        table.scatter_sub(tf.IndexedSlices(lr * grad.values, grad.indices))
        return
    values, rows = unique_sum(grad)
    if name == "adagrad":
        tf.raw_ops.ResourceSparseApplyAdagradV2(
            var=table.handle, accum=slots[0].handle, lr=lr, epsilon=tf.constant(EPSILON),
            grad=values, indices=rows)
        return
    m, v = slots
    b1, b2 = 0.9, 0.999
    t = tf.cast(step, tf.float32)
    m_rows = b1 * tf.gather(m, rows) + (1 - b1) * values
    v_rows = b2 * tf.gather(v, rows) + (1 - b2) * tf.square(values)
    m.scatter_update(tf.IndexedSlices(m_rows, rows))
    v.scatter_update(tf.IndexedSlices(v_rows, rows))
    lr_t = lr * tf.sqrt(1 - b2 ** t) / (1 - b1 ** t)
    table.scatter_sub(tf.IndexedSlices(lr_t * m_rows / (tf.sqrt(v_rows) + EPSILON), rows))


def slot_variables(optimizer, variable):
    """Keras' slot variables of `variable` (built on first use)."""
    optimizer.build([variable])
    index = optimizer._get_variable_index(variable)  # pylint: disable=protected-access
    if isinstance(optimizer, keras.optimizers.Adagrad):
        return [optimizer._accumulators[index].value]  # pylint: disable=protected-access
    if isinstance(optimizer, keras.optimizers.Adam):
        return [optimizer._momentums[index].value,  # pylint: disable=protected-access
                optimizer._velocities[index].value]  # pylint: disable=protected-access
    return []


def keras_step(layer, optimizer, ids, target, gradient="auto"):
    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(layer(ids) - target))
        variables = layer.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    def run():
        # The format is read when the step is traced (its first call).
        with memrec_tf.ops.gradient_format(gradient):
            return step()
    return run


def loss_step(ids, target):
    """The loss's forward and backward alone, on an output-shaped constant:
    the part of every variant's step that is not the embedding's."""
    out = tf.zeros(tf.concat([tf.shape(ids), [target.shape[-1]]], 0))

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch(out)
            loss = tf.reduce_mean(tf.square(out - target))
        return tape.gradient(loss, out)
    return step


def gradient_step(layer, ids, target):
    """The fused step without the optimizer: forward, loss and backward,
    the gradients returned (materialised) but not applied."""
    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(layer(ids) - target))
        return tape.gradient(loss, layer.trainable_variables)
    return step


def apply_step(layer, optimizer, rng):
    """The Keras optimizer's apply alone: fixed dense gradients of the
    layer's tables applied to them."""
    variables = layer.trainable_variables
    grads = [tf.constant(rng.standard_normal(v.shape), tf.float32) for v in variables]

    @tf.function
    def step():
        optimizer.apply_gradients(zip(grads, variables))
    return step


def raw_step(name, table, slots, ids, target):
    counter = tf.Variable(0, dtype=tf.int64)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(tf.nn.embedding_lookup(table, ids) - target))
        counter.assign_add(1)
        raw_apply(name, table, slots, tape.gradient(loss, table), counter)
        return loss
    return step


def make_embedding_optimizer(name):
    """The embedding optimizer of Keras optimizer `name`."""
    if name == "sgd":
        return memrec_tf.optimizers.SGD(LEARNING_RATE)
    if name == "adagrad":
        return memrec_tf.optimizers.Adagrad(LEARNING_RATE,
                                            initial_accumulator_value=ADAGRAD_INITIAL,
                                            epsilon=EPSILON)
    return memrec_tf.optimizers.Adam(LEARNING_RATE, epsilon=EPSILON)


def memrec_layer(args, k, implementation, embedding_optimizer=None):
    layer = memrec_tf.MemRecEmbedding(args.dim, args.m, num_hashes=k, num_weight_rows=args.m,
                                      num_weight_hashes=1, implementation=implementation, seed=1,
                                      embedding_optimizer=embedding_optimizer)
    layer.build((args.batch, args.features))
    return layer


def case_steps(args, rows, distribution, optimizer_name, rng):
    """{variant: step callable} of one (rows, distribution, optimizer) case."""
    ids = tf.constant(make_ids(rng, rows, args.batch * args.features, distribution).reshape(
        args.batch, args.features), tf.int64)
    target = tf.constant(rng.standard_normal((args.batch, args.features, args.dim)), tf.float32)
    embedding = keras.layers.Embedding(rows, args.dim)
    embedding.build((args.batch, args.features))
    keras_optimizer = make_optimizer(optimizer_name)
    table = embedding.embeddings.value
    steps = {"raw": raw_step(optimizer_name, table,
                             slot_variables(keras_optimizer, embedding.embeddings),
                             ids, target)}
    table_bytes = rows * args.dim * 4
    if table_bytes * KERAS_PEAK_TABLES[optimizer_name] <= args.memory_budget_gib * 2**30:
        steps["keras"] = keras_step(embedding, keras_optimizer, ids, target)
    for k in args.k:
        for implementation in args.implementations:
            steps[f"{implementation} k={k}"] = keras_step(
                memrec_layer(args, k, implementation), make_optimizer(optimizer_name), ids,
                target)
    if "fused" in args.implementations:
        for k in args.k:
            steps[f"update k={k}"] = update_step(args, k, optimizer_name, ids, target)
    if args.loss_reference:
        steps["loss only"] = loss_step(ids, target)
    if args.sparse_variant:
        k = max(args.k)
        steps[f"fused sparse k={k}"] = keras_step(
            memrec_layer(args, k, "fused"), make_optimizer(optimizer_name), ids, target,
            gradient="sparse")
    return steps


def update_step(args, k, optimizer_name, ids, target):
    """The fused layer's step with the token table updated in its backward."""
    layer = memrec_layer(args, k, "fused", make_embedding_optimizer(optimizer_name))
    return keras_step(layer, make_optimizer(optimizer_name), ids, target)


def breakdown_steps(args, optimizer_name, rng):
    """{part: callable} of the fused step's parts, timed as a group of their
    own: beside the full tables' cases, which evict the caches, differences
    of medians between cases would not mean much."""
    ids = tf.constant(rng.integers(0, 1 << 40, (args.batch, args.features)), tf.int64)
    target = tf.constant(rng.standard_normal((args.batch, args.features, args.dim)), tf.float32)
    steps = {"loss only": loss_step(ids, target)}
    # Each part has a layer of its own: a part that ran right after another on
    # the same tables would find them in the cache, and the difference
    # between two parts would measure the cache.
    for k in args.k:
        steps[f"k={k} step"] = keras_step(memrec_layer(args, k, "fused"),
                                          make_optimizer(optimizer_name), ids, target)
        forward = memrec_layer(args, k, "fused")
        steps[f"k={k} forward"] = tf.function(lambda layer=forward: layer(ids))
        steps[f"k={k} no apply"] = gradient_step(memrec_layer(args, k, "fused"), ids, target)
        steps[f"k={k} apply only"] = apply_step(memrec_layer(args, k, "fused"),
                                                make_optimizer(optimizer_name), rng)
        steps[f"k={k} update"] = update_step(args, k, optimizer_name, ids, target)
    return steps


def plot_steps(args, rows, rng):
    """{variant: callable} for the plot: forward and SGD step of the full table
    (one table for both) and of the fused layer."""
    ids = tf.constant(rng.integers(0, rows, (args.batch, args.features)), tf.int64)
    target = tf.constant(rng.standard_normal((args.batch, args.features, args.dim)), tf.float32)
    table = tf.Variable(tf.random.uniform([rows, args.dim], -0.05, 0.05))
    k = max(args.k)
    layer = memrec_layer(args, k, "fused")
    return {"full forward": tf.function(lambda: tf.nn.embedding_lookup(table, ids)),
            "fused forward": tf.function(lambda: layer(ids)),
            "full step (raw SGD)": raw_step("sgd", table, [], ids, target),
            f"fused step (Keras SGD, k={k})": keras_step(layer, make_optimizer("sgd"), ids,
                                                          target)}


def plot(args, rng, path):
    """Forward and SGD step times against the full table's rows."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("# --plot skipped: matplotlib is not installed")
        return None
    series = {}
    for rows in args.plot_rows:
        cases = plot_steps(args, rows, rng)
        samples = interleaved_times(cases, args.rounds, args.repeats, warmup=2)
        for name, v in samples.items():
            series.setdefault(name, []).append(statistics.median(v))
        print(f"# plot, {rows:,} rows: " + ", ".join(
            f"{name} {ms[-1]:.1f} ms" for name, ms in series.items()), flush=True)
        del cases
        gc.collect()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, ms in series.items():
        ax.plot(args.plot_rows, ms, marker="o", linestyle="--" if "forward" in name else "-",
                label=name)
    ax.set_xscale("log")
    ax.set_xlabel("full-table rows")
    ax.set_ylabel("ms (median)")
    ax.set_title(f"{args.batch} x {args.features} ids, d={args.dim}, MEM-REC m={args.m}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"# plot written to {path}")
    return {"rows": args.plot_rows, "median_ms": series}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--features", type=int, default=26)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--m", type=int, default=2 ** 16, help="MEM-REC token and weight rows")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000],
                        help="full-table rows (the ids are drawn from [0, rows))")
    parser.add_argument("--distributions", nargs="+", default=["uniform", "zipf"],
                        choices=["uniform", "zipf"])
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=OPTIMIZERS)
    parser.add_argument("--implementations", nargs="+", default=["fused", "core"],
                        choices=["fused", "core"])
    parser.add_argument("--no-sparse-variant", dest="sparse_variant", action="store_false",
                        help="leave out the fused layer with sparse gradients")
    parser.add_argument("--loss-reference", action="store_true",
                        help="also time the loss's forward and backward alone")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time, as a group of their own, the fused layer's step, its "
                             "forward alone, its step without the optimizer's apply (gradients "
                             "materialised), the apply alone, the loss alone and the step with "
                             "the update in the backward")
    parser.add_argument("--memory-budget-gib", type=float, default=11.0,
                        help="leave out Keras variants whose estimated peak exceeds this")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--plot", help="also time forward and step against --plot-rows and "
                                       "write a PNG here (needs matplotlib)")
    parser.add_argument("--plot-rows", type=int, nargs="+",
                        default=[1_000_000, 2_000_000, 5_000_000],
                        help="full-table rows of the plot (10M passed 11 GiB after the smaller "
                             "sizes in one process)")
    parser.add_argument("--plot-only", action="store_true",
                        help="only the --plot sweep (a fresh process: the table runs' memory "
                             "is not all returned)")
    parser.add_argument("--quick", action="store_true",
                        help="1M rows, uniform ids, k=2, fused only, 3 rounds: a check in "
                             "under a minute")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.distributions, args.k = [1_000_000], ["uniform"], [2]
        args.implementations, args.sparse_variant = ["fused"], False
        args.rounds, args.repeats = 3, 1
        args.plot_rows = [1_000_000, 2_000_000]
    available, reason = memrec_tf.ops.is_available()
    if not available:
        sys.exit(f"bench_train_step: the fused op is unavailable: {reason}")

    rng = np.random.default_rng(args.seed)
    results = []
    print(f"# bench_train_step: {args.batch} x {args.features} ids, d={args.dim}, "
          f"MEM-REC m={args.m} (one weight hash), Keras {keras.__version__}, "
          f"TensorFlow {tf.__version__}")
    print(f"# {cpu_name()}, {os.cpu_count()} cores; median of {args.rounds} rounds x "
          f"{args.repeats}; ms per step")
    variants = ["raw", "keras"] + [f"{i} k={k}" for k in args.k for i in args.implementations]
    if "fused" in args.implementations:
        variants += [f"update k={k}" for k in args.k]
    if args.sparse_variant:
        variants.append(f"fused sparse k={max(args.k)}")
    if args.loss_reference:
        variants.append("loss only")
    print("| rows | ids | optimizer | " + " | ".join(variants) + " |")
    print("|---|---|---|" + "---|" * len(variants))
    for rows in [] if args.plot_only else args.rows:
        for distribution in args.distributions:
            for name in args.optimizers:
                steps = case_steps(args, rows, distribution, name, rng)
                samples = interleaved_times(steps, args.rounds, args.repeats,
                                            warmup=1 if args.quick else 2)
                median = {v: statistics.median(s) for v, s in samples.items()}
                results.append(dict(rows=rows, ids=distribution, optimizer=name,
                                    median_ms=median))
                print(f"| {rows:,} | {distribution} | {name} | " +
                      " | ".join(f"{median[v]:.1f}" if v in median else "-"
                                 for v in variants) + " |", flush=True)
                del steps
                gc.collect()  # the previous case's tables go before the next is built
    best_k = max(args.k)
    fused = f"fused k={best_k}"
    if "fused" in args.implementations and results:
        update = f"update k={best_k}"
        print(f"\nratios (medians, same case): raw and keras against {fused} and {update}")
        print("| rows | ids | optimizer | raw / fused | keras / fused | raw / update | "
              "keras / update |")
        print("|---|---|---|---|---|---|---|")
        for r in results:
            m = r["median_ms"]

            def ratio(a, b, m=m):
                return f"{m[a] / m[b]:.2f}x" if a in m and b in m else "-"
            print(f"| {r['rows']:,} | {r['ids']} | {r['optimizer']} | {ratio('raw', fused)} | "
                  f"{ratio('keras', fused)} | {ratio('raw', update)} | "
                  f"{ratio('keras', update)} |")
    breakdown = []
    if args.breakdown:
        print("\nwhere the fused step goes (ms, medians of a group of its own): forward; "
              "backward = no apply - forward - loss only; apply = step - no apply")
        print("| optimizer | k | step | forward | loss only | backward | apply | no apply | "
              "apply only | update step |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for name in args.optimizers:
            samples = interleaved_times(breakdown_steps(args, name, rng), args.rounds,
                                        args.repeats, warmup=2)
            m = {v: statistics.median(t) for v, t in samples.items()}
            breakdown.append(dict(optimizer=name, median_ms=m))
            for k in args.k:
                step, fwd = m[f"k={k} step"], m[f"k={k} forward"]
                grad, loss = m[f"k={k} no apply"], m["loss only"]
                print(f"| {name} | {k} | {step:.1f} | {fwd:.1f} | {loss:.1f} | "
                      f"{grad - fwd - loss:.1f} | {step - grad:.1f} | {grad:.1f} | "
                      f"{m[f'k={k} apply only']:.1f} | "
                      f"{m[f'k={k} update']:.1f} |", flush=True)
    record = {"args": vars(args), "results": results, "breakdown": breakdown,
              "cpu": cpu_name(),
              "cores": os.cpu_count(), "tensorflow": tf.__version__,
              "keras": keras.__version__}
    if args.json:  # before the plot, which may run out of time or memory
        write_json(args.json, record)
    if args.plot:
        record["plot"] = plot(args, rng, args.plot)
        if args.json:
            write_json(args.json, record)


if __name__ == "__main__":
    main()
