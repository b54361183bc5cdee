"""MEM-REC at Criteo Terabyte scale: bytes, training throughput, synthetic accuracy.

Three parts, all printed as markdown tables and saved to --out (JSON):

  (a) bytes: the 26 MLPerf Criteo Terabyte cardinalities
      (`data.TERABYTE_CARDINALITIES`, each capped at --cap rows, 40M as in
      MLPerf DLRM), d=128, float32: the full tables' bytes against MEM-REC
      configurations (one shared token table of m rows x d plus a scalar
      weight table of m_w rows) and the ratio. Computed, nothing allocated.
  (b) throughput: DLRM (bottom MLP 64 -> d, pairwise dots, top MLP 64-32-1,
      Adam) on the same synthetic batches (SyntheticCriteo, 13 dense + 26
      categorical features, cardinalities capped at --full-cap N), once with
      full tables (one per feature, sum(min(c, N)) rows x d) and once with
      MEM-REC (--memrec-rows m x d, k=2). Timed side by side: the two models'
      windows alternate, --windows windows of --steps steps each after one
      warm-up window, median examples/s. Keras' Adam updates a dense table and
      both slots in full on every step (its update turns the sparse gradient
      dense), so the full model's step scales with the table size.
  (c) accuracy at large cardinalities: SyntheticCriteo with --acc-features
      features of --acc-card values each (Zipf exponent 1.1, where random-hash
      collisions matter most), train / dev / test drawn from independent
      streams of one planted model; raw ids are mapped to a dense global
      index by training frequency (per-feature OOV slot, then all values
      relabelled so 0 is the most frequent, as in accuracy_vs_memory.py).
      full (V rows) vs hashing, qr, memrec-paper-k2 (random hashes of the
      ids) and memrec-vocab / memrec-vocab-head (vocabulary signatures) at
      each --acc-budgets compression, DLRM d=16, early stopping on dev.

    python benchmarks/bench_scale.py                 # all three parts
    python benchmarks/bench_scale.py --quick         # small (b) and (c)
    python benchmarks/bench_scale.py --parts a,b
"""
import argparse
import os
import resource
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common  # noqa: E402

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "scale.json")


def fmt_bytes(n):
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


# ------------------------------------------------------------------ (a) bytes

def part_bytes(args):
    from memrec_tf import data as mdata
    from memrec_tf import sizing

    d, cap = args.dim, args.cap
    cards = [min(c, cap) for c in mdata.TERABYTE_CARDINALITIES]
    full = sizing.full_config(d, cardinalities=cards)
    rows = []
    for m in (1 << 16, 1 << 18, 1 << 20):
        weight_rows = m  # scalar weights: m_w = m, 4 bytes each
        nbytes = (m * d + weight_rows) * 4
        rows.append(dict(config=f"shared m=2^{m.bit_length() - 1} x d={d}, m_w=2^"
                                f"{m.bit_length() - 1} scalar, k=2",
                         token_rows=m, weight_rows=weight_rows, bytes=nbytes,
                         ratio=full.bytes / nbytes))
    for ratio in (2900,):
        c = sizing.memrec_config(d, cardinalities=cards, compression=ratio)
        rows.append(dict(config=f"memrec_config(compression={ratio}), weight 1/8 of bytes",
                         token_rows=c.options["num_token_rows"],
                         weight_rows=c.options["num_weight_rows"], bytes=c.bytes,
                         ratio=full.bytes / c.bytes))
    res = dict(dim=d, cap=cap, full_rows=sum(cards), full_bytes=full.bytes, configs=rows)
    lines = [f"### (a) Criteo Terabyte bytes (26 features capped at {cap:,} rows, d={d}, float32)",
             "", f"full: {sum(cards):,} rows -> {fmt_bytes(full.bytes)} ({full.bytes:,} B)", "",
             "| MEM-REC configuration | token rows | weight rows | bytes | full / MEM-REC |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['token_rows']:,} | {r['weight_rows']:,} | "
                     f"{fmt_bytes(r['bytes'])} | {r['ratio']:,.0f}x |")
    return res, "\n".join(lines)


# ------------------------------------------------------------- (b) throughput

def _peak_rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def part_throughput(args):
    import tensorflow as tf
    from memrec_tf import data as mdata
    from memrec_tf import models
    from memrec_tf.features import FeatureSpec

    keras = tf.keras
    keras.utils.set_random_seed(0)
    d, n, batch = args.dim, args.full_cap, args.batch
    cards = [min(c, n) for c in mdata.TERABYTE_CARDINALITIES]
    gen = mdata.SyntheticCriteo(cards, num_dense=13, batch_size=batch, seed=0)
    batches = [gen.batch(i) for i in range(args.num_batches)]
    dense = np.concatenate([b[0]["dense"] for b in batches])
    cat = np.concatenate([b[0]["categorical"] for b in batches])
    label = np.concatenate([b[1] for b in batches])
    ds = (tf.data.Dataset.from_tensor_slices(({"dense": dense, "categorical": cat}, label))
          .batch(batch, drop_remainder=True).repeat().prefetch(2))
    spec = FeatureSpec.of(num_dense=13, cardinalities=cards)
    built = {}
    mem = {"start": _peak_rss_gb()}
    configs = [("full", "full", {}),
               ("memrec", "memrec", dict(num_token_rows=args.memrec_rows,
                                         num_weight_rows=args.memrec_rows, num_hashes=2))]
    for name, method, options in configs:
        model = models.build_model("dlrm", spec, embedding=method, embedding_options=options,
                                   embedding_dim=d, seed=0, top_mlp=(64, 32))
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy",
                      jit_compile=False)
        built[name] = (model, models.embedding_report(model))
        mem[f"after_build_{name}"] = _peak_rss_gb()

    class Timer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times = []

        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self.t)

    timers = {name: Timer() for name in built}
    # One warm-up window each (tracing, slot creation), then alternate.
    for name, (model, _) in built.items():
        model.fit(ds, steps_per_epoch=args.steps, epochs=1, verbose=0)
        mem[f"after_warmup_{name}"] = _peak_rss_gb()
    for _ in range(args.windows):
        for name, (model, _) in built.items():
            model.fit(ds, steps_per_epoch=args.steps, epochs=1, verbose=0,
                      callbacks=[timers[name]])
    rows = []
    for name, (model, rep) in built.items():
        times = timers[name].times
        eps = [args.steps * batch / t for t in times]
        rows.append(dict(model=name, embedding_bytes=rep.bytes, full_bytes=rep.full_bytes,
                         adam_state_bytes=2 * rep.bytes,
                         examples_per_s_median=statistics.median(eps),
                         examples_per_s_all=eps, step_ms_median=1e3 * statistics.median(times)
                         / args.steps))
    speedup = rows[1]["examples_per_s_median"] / rows[0]["examples_per_s_median"]
    res = dict(dim=d, full_cap=n, full_rows=sum(cards), batch=batch, steps=args.steps,
               windows=args.windows, memrec_rows=args.memrec_rows, rows=rows,
               memrec_speedup=speedup, peak_rss_gb=mem)
    lines = [f"### (b) DLRM training throughput (synthetic, 13 dense + 26 categorical, "
             f"cardinalities capped at N={n:,} -> {sum(cards):,} full rows, d={d}, batch {batch}, "
             f"Adam)", "",
             "| model | embedding bytes | + 2 Adam slots | examples/s (median) | ms/step |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {fmt_bytes(r['embedding_bytes'])} | "
                     f"{fmt_bytes(3 * r['embedding_bytes'])} | "
                     f"{r['examples_per_s_median']:,.0f} | {r['step_ms_median']:.1f} |")
    lines += ["", f"MEM-REC / full throughput: {speedup:.2f}x; median of {args.windows} "
              f"alternating windows of {args.steps} steps after one warm-up window each; "
              f"peak RSS {max(mem.values()):.1f} GB"]
    for model, _ in built.values():
        del model
    keras.backend.clear_session()
    return res, "\n".join(lines)


# ------------------------------------------------------ (c) synthetic accuracy

def synthetic_data(args):
    from memrec_tf import data as mdata

    cards = [args.acc_card] * args.acc_features
    rows = {"train": args.acc_train, "dev": args.acc_eval, "test": args.acc_eval}
    raw = {}
    for stream, (split, count) in enumerate(rows.items()):
        gen = mdata.SyntheticCriteo(cards, num_dense=13, num_rows=count, batch_size=65536,
                                    seed=0, stream=stream)
        parts = list(gen.iter_batches())
        raw[split] = {"dense": np.concatenate([p[0]["dense"] for p in parts]),
                      "categorical": np.concatenate([p[0]["categorical"] for p in parts]),
                      "label": np.concatenate([p[1] for p in parts])}
    vocab = mdata.Vocabulary.fit(raw["train"]["categorical"])
    V = int(vocab.size)
    index = {s: vocab.lookup(r["categorical"]) for s, r in raw.items()}
    rank = mdata.frequency_order(index["train"], V)
    splits = {s: {"dense": raw[s]["dense"], "index": rank[index[s]], "label": raw[s]["label"]}
              for s in raw}
    oov = {s: float(np.mean(np.isin(index[s], vocab.offsets))) for s in ("dev", "test")}
    distinct = [int(c) - 1 for c in vocab.cardinalities]
    return {"name": "synthetic", "num_dense": 13, "cardinalities": [int(c) for c in
            vocab.cardinalities], "vocabulary_size": V, "splits": splits,
            "rows": rows, "distinct_train_values": distinct, "oov_share": oov,
            "positive_rate": float(raw["train"]["label"].mean())}


def part_accuracy(args):
    import tensorflow as tf
    tf.get_logger().setLevel("ERROR")
    t0 = time.time()
    data = synthetic_data(args)
    methods = args.acc_methods.split(",")
    runs = []
    cells = [("full", 1)] + [(m, b) for b in args.acc_budgets for m in methods if m != "full"]
    for seed in range(args.acc_seeds):
        for m, b in cells:
            if m == "full" and "full" not in methods:
                continue
            rec = dict(method=m, budget=b, seed=seed)
            try:
                rec.update(common.train_eval(data, m, b, seed, max_epochs=args.acc_epochs,
                                             batch_size=1024))
            except ValueError as e:
                rec["error"] = str(e)
            runs.append(rec)
            msg = (f"n/a ({rec['error'][:60]})" if "error" in rec else
                   f"val {rec['val_auc']:.4f} test {rec['test_auc']:.4f} epochs {rec['epochs']}"
                   f" ({rec['seconds']:.0f}s)")
            print(f"[scale c] {m} /{b} seed {seed}: {msg}", flush=True)
    res = dict(features=args.acc_features, card=args.acc_card, zipf_exponent=1.1,
               rows=data["rows"], vocabulary_size=data["vocabulary_size"],
               distinct_train_values=data["distinct_train_values"], oov_share=data["oov_share"],
               positive_rate=data["positive_rate"], max_epochs=args.acc_epochs, runs=runs,
               seconds=round(time.time() - t0, 1))

    def cell(m, b):
        vals = [r["test_auc"] for r in runs if r["method"] == m and r["budget"] == b
                and "error" not in r]
        if not vals:
            return None
        return (statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0,
                [r["bytes"] for r in runs if r["method"] == m and r["budget"] == b][0])

    lines = [f"### (c) synthetic accuracy at large cardinalities ({args.acc_features} features x "
             f"{args.acc_card:,} values, Zipf 1.1, {args.acc_train:,} train rows -> V = "
             f"{data['vocabulary_size']:,} train values; dev/test {args.acc_eval:,} rows, "
             f"OOV share of test ids {data['oov_share']['test']:.1%}; {args.acc_seeds} seed(s), "
             f"max {args.acc_epochs} epochs)", ""]
    full = cell("full", 1)
    if full:
        lines.append(f"full (V rows, {fmt_bytes(full[2])}): test AUC {full[0]:.4f} ± {full[1]:.4f}")
        lines.append("")
    lines += ["| method | " + " | ".join(f"full/{b}" for b in args.acc_budgets) + " |",
              "|---|" + "---|" * len(args.acc_budgets)]
    for m in methods:
        if m == "full":
            continue
        row = [m]
        for b in args.acc_budgets:
            c = cell(m, b)
            row.append("n/a" if c is None else f"{c[0]:.4f} ± {c[1]:.4f} ({fmt_bytes(c[2])})")
        lines.append("| " + " | ".join(row) + " |")
    return res, "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default="a,b,c")
    p.add_argument("--quick", action="store_true",
                   help="(b) N=100,000, 3 windows of 3 steps; (c) 4 features x 500,000 values, "
                        "60,000 train rows, /16 only, full/hashing/qr/memrec-paper-k2/"
                        "memrec-vocab, 3 epochs")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--cap", type=int, default=40_000_000)
    p.add_argument("--full-cap", type=int, default=500_000,
                   help="(b) every feature capped at N rows for the full model")
    p.add_argument("--memrec-rows", type=int, default=1 << 16)
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--windows", type=int, default=4)
    p.add_argument("--num-batches", type=int, default=8)
    p.add_argument("--acc-features", type=int, default=8)
    p.add_argument("--acc-card", type=int, default=2_000_000)
    p.add_argument("--acc-train", type=int, default=200_000)
    p.add_argument("--acc-eval", type=int, default=50_000)
    p.add_argument("--acc-budgets", default="16,64")
    p.add_argument("--acc-seeds", type=int, default=1)
    p.add_argument("--acc-epochs", type=int, default=5)
    p.add_argument("--acc-methods",
                   default="full,hashing,qr,memrec-paper-k2,memrec-vocab,memrec-vocab-head")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.full_cap, args.steps, args.windows = 100_000, 3, 3
        args.acc_features, args.acc_card, args.acc_train, args.acc_eval = 4, 500_000, 60_000, 20_000
        args.acc_budgets, args.acc_epochs = "16", 3
        args.acc_methods = "full,hashing,qr,memrec-paper-k2,memrec-vocab"
        args.out = args.out or DEFAULT_OUT.replace("scale.json", "scale_quick.json")
    args.out = args.out or DEFAULT_OUT
    args.acc_budgets = [int(b) for b in str(args.acc_budgets).split(",") if b]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    parts = args.parts.split(",")
    result = {"machine": common.machine_info(), "args": {k: v for k, v in vars(args).items()}}
    texts = []
    for part, fn in (("a", part_bytes), ("b", part_throughput), ("c", part_accuracy)):
        if part not in parts:
            continue
        t = time.time()
        res, text = fn(args)
        res["seconds"] = round(time.time() - t, 1)
        result[part] = res
        common.write_json(args.out, result)
        print(text + "\n", flush=True)
        texts.append(text)
    result["markdown"] = "\n\n".join(texts)
    common.write_json(args.out, result)
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
