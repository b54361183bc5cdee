"""Test AUC against embedding bytes: MEM-REC variants vs full, hashing and QR.

DLRM (16-d embeddings, pairwise-dot interaction, top MLP 64-32-1), Adam
lr 1e-3, batch 256 (chosen once on Frappe's validation split, see
BATCH_SIZE), early stopping on the validation split (patience 1, best
weights restored, at most 10 epochs); test AUC of the best epoch, mean
and std over seeds (each seed sets model init, hashes and shuffling). All
methods read the same dense global vocabulary index, relabelled by training
frequency (index 0 = the most frequent value of the training split, over all
features; the loaders order values by frequency only within each column, and
Frappe keeps its libFM order).

Two regimes (--regime):
  raw         the model receives raw ids (the default): a method that reads
              the dense frequency index (full, qr, memrec-vocab*) needs the
              id -> index mapping in the model, and its bytes count it
              (sizing.vocabulary_mapping_bytes of the values seen in
              training); hashing and memrec-paper hash the ids and need none.
  vocabulary  the mapping is common to all methods and not counted (the
              vocabulary-layer regime; results/accuracy.json).

Budgets are in served bytes, against the float32 full tables (compression
against float32 full tables): a method suffixed -bf16 or -int8 is trained in
float32 at the rows that fit the budget with its (token) tables stored as
bfloat16 or int8 with a float32 scale per row (memrec_tf.ops.quantize), and
evaluated as served, its tables replaced by quantize.round_trip (what the
serving op reads). Every run also records the AUC of its model with its
tables rounded to each format ("rounded"), so the rounding cost is measured
for every method, and its float32 AUC (test_auc_float32).

Methods (bytes count every table: token + weight tables, both QR tables):
  full                  one table of V rows (budget = full)
  full-int8             the same, served as int8 (V x (d + 4) bytes)
  hashing               hashing trick, R rows
  qr                    shared quotient-remainder, product combination
  memrec-paper-k{2,3}   random (feature-salted) hashes of the ids, scalar
                        weight table with 1/8 of the bytes, W = 1 at init;
                        "memrec-paper" = the k with the better validation AUC
  memrec-vocab          collision-free mixed-radix vocabulary signatures, k=2,
                        scalar weights with 1/8 of the bytes
  memrec-vocab-noW      the same, no weight table (alpha = 1), all bytes to tokens
  memrec-vocab-perhash  per-hash weights (W is [m_w, k]), 1/8 of the bytes
  memrec-vocab-head     memrec-vocab with a quarter of the token rows as head
                        rows: the H most frequent values own a row each
  memrec-paper-k{2,3}-{bf16,int8}  the paper's MEM-REC, token table served as
                        bfloat16 / int8 (weight table in float32); "memrec-paper-bf16"
                        and "memrec-paper-int8" = the better k by validation AUC
  memrec-paper-k2-head[-int8]  an experiment: the paper's MEM-REC on hashed
                        ids, except the H most frequent values, which own a
                        row each; serving finds them in a sorted int64 table
                        of the H head ids, 8 bytes each, counted. Head rows
                        and ids take --head-fraction of the bytes (default
                        sizing.HEAD_FRACTION), the paper's MEM-REC the rest
  "memrec_tf best"      per budget, the MEM-REC variant with the best mean
                        validation AUC (its test AUC is reported)
  "best served"         (raw regime) per budget, the method with the best mean
                        validation AUC as served

    python benchmarks/accuracy_vs_memory.py                      # full grid, raw ids
    python benchmarks/accuracy_vs_memory.py --regime vocabulary  # mapping not counted
    python benchmarks/accuracy_vs_memory.py --quick              # see --quick below
    python benchmarks/accuracy_vs_memory.py --datasets frappe --seeds 5 --budgets 4,16
    python benchmarks/accuracy_vs_memory.py --datasets zipf --batch-size 1024 ...  # see ZIPF

Data sets: Frappe, MovieLens-100K, the Criteo sample (../shared/data), and
"zipf", a synthetic large-vocabulary set (ZIPF: 2 features of 2M values,
Zipf(1.05), 1M training rows; float32 full table 256 MB), not in the
default --datasets.

Resumable: runs already in --out (same dataset, method, budget, seed and
protocol) are skipped. Skips a data set with a message when its files are
absent.
"""
import argparse
import math
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common  # noqa: E402

DATASETS = ("frappe", "movielens", "criteo", "zipf")
# The synthetic large-vocabulary set ("zipf"): memrec_tf.data.SyntheticCriteo
# with ZIPF["features"] features of ZIPF["values"] values each, Zipf(1.05)
# frequencies and a planted per-value effect on the label; train rows from
# stream 0, validation and test rows from stream 1.
ZIPF = dict(features=2, values=2_000_000, zipf_exponent=1.05, num_dense=4,
            rows=dict(train=1_000_000, dev=100_000, test=200_000), seed=0)
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
REGIMES = ("raw", "vocabulary")
DEFAULT_OUT = {"raw": os.path.join(RESULTS, "accuracy_served.json"),
               "vocabulary": os.path.join(RESULTS, "accuracy.json")}
RAW_REGIME = "raw ids: the id -> index mapping of a dense-index method counted in its bytes"
# Picks of the better k (by validation AUC) of the paper's MEM-REC, per format.
PAPER_PICKS = {"memrec-paper": ("memrec-paper-k2", "memrec-paper-k3"),
               "memrec-paper-bf16": ("memrec-paper-k2-bf16", "memrec-paper-k3-bf16"),
               "memrec-paper-int8": ("memrec-paper-k2-int8", "memrec-paper-k3-int8")}
ROUNDING_TARGET = 0.001
RAW_FULL_GAP_TARGET = 0.01
BEST_MARGIN = 0.001
# Batch size chosen once on the Frappe validation split (full model, seed 0; see
# results/batch_choice.json): 1024 was still improving at epoch 10 (val AUC 0.9389),
# 256 reached 0.9537, 128 0.9549, 64 0.9542; 256 is within 0.0012 of the best at half the
# wall time of 128 on the 2-core machine, and is used for every data set.
BATCH_SIZE = 256
PROTOCOL = dict(model="dlrm", embedding_dim=16, top_mlp=[64, 32], optimizer="adam", lr=1e-3,
                batch_size=BATCH_SIZE, max_epochs=10, patience=1, monitor="val_auc",
                index="global dense index, relabelled by train frequency")
# --quick: what run_all.py --quick runs (see its docstring).
QUICK = dict(datasets="criteo,frappe", seeds=1, budgets="16,64", frappe_fraction=0.3,
             methods="full,hashing,qr,memrec-paper-k2,memrec-paper-k2-int8,memrec-vocab,"
                     "memrec-vocab-head")


def load(name, frappe_fraction=1.0):
    """The data set as plain arrays with frequency-ranked indices, or None if absent."""
    from memrec_tf import data as mdata
    try:
        if name == "frappe":
            d = mdata.load_frappe(dev_fraction=0.1, seed=0)
        elif name == "movielens":
            d = mdata.load_movielens100k(seed=0)
        elif name == "criteo":
            d = mdata.load_criteo_sample()
        elif name == "zipf":
            d = zipf_data()
        else:
            raise ValueError(f"unknown data set {name!r}; have {DATASETS}")
    except FileNotFoundError as e:
        print(f"[skip] {name}: data not found ({e}); put the shared data in ../shared/data "
              "or set MEMREC_DATA_DIR", flush=True)
        return None
    V = int(d.spec.vocabulary_size)
    splits = {s: d.splits[s] for s in ("train", "dev", "test")}
    if frappe_fraction < 1.0 and name == "frappe":
        rng = np.random.default_rng(0)
        n = len(splits["train"]["label"])
        keep = np.sort(rng.permutation(n)[:int(frappe_fraction * n)])
        splits["train"] = {k: v[keep] for k, v in splits["train"].items()}
    rank = mdata.frequency_order(splits["train"]["index"], V)
    out = {}
    for s, arr in splits.items():
        idx = arr["index"]
        assert idx.min() >= 0 and idx.max() < V, (name, s)
        out[s] = {"dense": np.asarray(arr["dense"], np.float32), "index": rank[idx],
                  "label": np.asarray(arr["label"], np.float32)}
    # The id -> index mapping a model reading raw ids needs: the values seen in
    # training, per feature, and an out-of-vocabulary index per feature.
    train_index = out["train"]["index"]
    seen = [int(np.unique(train_index[:, j]).size) + 1 for j in range(train_index.shape[1])]
    from memrec_tf import sizing
    return {"name": name, "num_dense": int(out["train"]["dense"].shape[1]),
            "cardinalities": [int(c) for c in d.spec.cardinalities], "vocabulary_size": V,
            "mapping_bytes": sizing.vocabulary_mapping_bytes(seen),
            "splits": out, "rows": {s: int(len(v["label"])) for s, v in out.items()}}


def zipf_data():
    """The synthetic large-vocabulary set (ZIPF) with global dense indices."""
    import types
    from memrec_tf.data.synthetic import SyntheticCriteo
    cards = [ZIPF["values"]] * ZIPF["features"]
    offsets = np.arange(len(cards), dtype=np.int64) * ZIPF["values"]
    rows = ZIPF["rows"]

    def draw(stream, n):
        features, label = SyntheticCriteo(
            cards, num_dense=ZIPF["num_dense"], num_rows=n, batch_size=n, seed=ZIPF["seed"],
            stream=stream, zipf_exponent=ZIPF["zipf_exponent"]).batch(0)
        return {"dense": features["dense"], "index": features["categorical"] + offsets,
                "label": label}

    held_out = draw(1, rows["dev"] + rows["test"])
    cut = rows["dev"]
    splits = {"train": draw(0, rows["train"]),
              "dev": {k: v[:cut] for k, v in held_out.items()},
              "test": {k: v[cut:] for k, v in held_out.items()}}
    spec = types.SimpleNamespace(vocabulary_size=sum(cards), cardinalities=cards)
    return types.SimpleNamespace(spec=spec, splits=splits)


def run_key(r):
    return (r["dataset"], r["method"], int(r["budget"]), int(r["seed"]))


def load_results(path):
    import json
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {"protocol": PROTOCOL, "machine": None, "datasets": {}, "runs": []}


def grid(methods, budgets):
    cells = [(m, 1) for m in common.FULL_METHODS if m in methods]
    for b in budgets:
        for m in methods:
            if m not in common.FULL_METHODS:
                cells.append((m, b))
    return cells


# ---------------------------------------------------------------- summaries

def _stats(vals):
    vals = [v for v in vals if v is not None and not math.isnan(v)]
    if not vals:
        return None
    return (statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0, len(vals))


def summarize(runs, dataset, budgets, methods=None):
    """{(method, budget): {test, val, bytes, n}} with memrec-paper and memrec_tf best added."""
    runs = [r for r in runs if r["dataset"] == dataset]
    # Per budget, only the seeds every method of that budget has run (a run cut
    # short leaves some cells a seed ahead; their means would not compare).
    present = {}
    for r in runs:
        present.setdefault(int(r["budget"]), {}).setdefault(r["method"], set()).add(r["seed"])
    complete = {}
    for b, ms in present.items():
        expected = ([m for m in common.FULL_METHODS if m in ms] if b == 1 else
                    [m for m in (methods or ms) if m not in common.FULL_METHODS])
        complete[b] = set.intersection(*[ms.get(m, set()) for m in expected])
    by = {}
    for r in runs:
        if r.get("error") or r["seed"] not in complete[int(r["budget"])]:
            continue
        by.setdefault((r["method"], int(r["budget"])), []).append(r)
    cells = {}
    for key, rs in by.items():
        cells[key] = dict(test=_stats([r["test_auc"] for r in rs]),
                          val=_stats([r["val_auc"] for r in rs]), bytes=rs[0]["bytes"],
                          mapping=rs[0].get("mapping_bytes", 0),
                          dtype=rs[0].get("table_dtype", "float32"),
                          test_f32=_stats([r.get("test_auc_float32", r["test_auc"])
                                           for r in rs]),
                          rounding=rounding_costs(rs),
                          epochs=statistics.fmean(r["epochs"] for r in rs), n=len(rs))
    for b in budgets:
        for pick, ks in PAPER_PICKS.items():
            paper = [(m, cells[(m, b)]) for m in ks if (m, b) in cells]
            if paper:
                m, c = max(paper, key=lambda mc: mc[1]["val"][0])
                cells[(pick, b)] = dict(c, pick=m)
        runs_at_b = [(m, c) for (m, bb), c in cells.items()
                     if bb == b and "pick" not in c and m in common.METHODS]
        if runs_at_b:
            m, c = max(runs_at_b, key=lambda mc: mc[1]["val"][0])
            cells[("best served", b)] = dict(c, pick=m)
        variants = [(m, cells[(m, b)]) for m in common.MEMREC_VARIANTS if (m, b) in cells]
        if variants:
            m, c = max(variants, key=lambda mc: mc[1]["val"][0])
            cells[("memrec_tf best", b)] = dict(c, pick=m)
    return cells


def rounding_costs(runs):
    """{format: (mean, sd, n)} of test AUC as trained minus with tables rounded."""
    out = {}
    for name in ("bfloat16", "int8", "int8+W"):
        diffs = [r.get("test_auc_float32", r["test_auc"]) - r["rounded"][name]["test"]
                 for r in runs if name in r.get("rounded", {})]
        if diffs:
            out[name] = _stats(diffs) + (max(diffs),)
    return out


def fmt_bytes(n):
    for unit, size in (("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def table_rows(methods):
    """The rows of a table: the runs, each paper pick before its k runs, the bests."""
    rows = [m for m in methods if m not in common.FULL_METHODS]
    for pick, ks in PAPER_PICKS.items():
        present = [m for m in rows if m in ks]
        if present:
            rows.insert(rows.index(present[0]), pick)
    return rows + ["memrec_tf best", "best served"]


def table(cells, dataset, budgets, methods, regime="vocabulary", full_bytes=None):
    rows = table_rows(methods)
    out = [f"### {dataset} ({regime_label(regime)})", ""]
    for m in common.FULL_METHODS:
        full = cells.get((m, 1))
        if full:
            t = full["test"]
            line = (f"{m}: test AUC {t[0]:.4f} ± {t[1]:.4f} (n={t[2]}), "
                    f"{fmt_bytes(full['bytes'])}")
            if full["mapping"]:
                line += f" (incl. {fmt_bytes(full['mapping'])} id -> index mapping)"
            if full_bytes:
                line += f" = full/{full_bytes / full['bytes']:.2f}"
            if full["dtype"] != "float32":
                line += f"; float32 before rounding {full['test_f32'][0]:.4f}"
            out.append(line + f", mean epochs {full['epochs']:.1f}")
    out.append("")
    out.append("| method | " + " | ".join(f"full/{b}" for b in budgets) + " |")
    out.append("|---|" + "---|" * len(budgets))
    for m in rows:
        line = [m]
        for b in budgets:
            c = cells.get((m, b))
            if c is None:
                line.append("n/a")
                continue
            t = c["test"]
            s = f"{t[0]:.4f} ± {t[1]:.4f} ({fmt_bytes(c['bytes'])}, n={t[2]})"
            if c["dtype"] != "float32":
                s += f" f32 {c['test_f32'][0]:.4f}"
            if "pick" in c:
                s += f" [{c['pick']}]"
            line.append(s)
        if any(x != "n/a" for x in line[1:]):
            out.append("| " + " | ".join(line) + " |")
    out.append("")
    out.append("Cells: mean ± std of test AUC as served over n seeds (served bytes of all tables"
               + (" and any id -> index mapping" if regime == "raw" else "") + "; per budget "
               "only the seeds every method has finished); f32: the same models' test AUC "
               "before their tables were rounded. memrec-paper*: the better k by validation "
               "AUC; memrec_tf best: the MEM-REC variant with the best mean validation AUC; "
               "best served: the method with the best mean validation AUC at that budget. "
               "Rows with no cell at any budget are left out; n/a: the method cannot fit the "
               "budget (its mapping alone, QR below 2 sqrt(V) rows) or no seed has finished "
               "every method at that budget.")
    return "\n".join(out)


def rounding_table(cells, dataset, budgets, methods):
    """Test AUC lost by rounding each trained model's tables, per format."""
    out = [f"#### {dataset}: rounding cost (test AUC as trained in float32 minus with its "
           "tables rounded; mean over seeds, and the largest single run; int8+W: MEM-REC's "
           "weight table rounded to int8 too)",
           "", "| method | budget | bfloat16 | int8 | int8+W |", "|---|---|---|---|---|"]
    for m in methods:
        for b in ([1] if m in common.FULL_METHODS else budgets):
            c = cells.get((m, b))
            if c is None or not c["rounding"]:
                continue
            r = c["rounding"]
            out.append(f"| {m} | {'full' if b == 1 else f'/{b}'} | "
                       + " | ".join(f"{r[k][0]:+.5f} (max {r[k][3]:+.5f})" if k in r else "-"
                                    for k in ("bfloat16", "int8", "int8+W")) + " |")
    return "\n".join(out)


def regime_label(regime):
    return ("raw ids: id -> index mappings counted" if regime == "raw"
            else "vocabulary-layer regime: the id -> index mapping common to all, not counted")


def targets(summaries, budgets):
    """Lines 'PASS/MISS (x) ...' for the targets of the accuracy issue."""
    lines = []

    def get(ds, m, b):
        c = summaries.get(ds, {}).get((m, b))
        return None if c is None else c["test"][0]

    main = [d for d in ("frappe", "movielens") if d in summaries]
    # (a) within 0.002 of full with >= 16x fewer bytes.
    for ds in main:
        full = get(ds, "full", 1)
        ok_budgets = [b for b in budgets if b >= 16 and get(ds, "memrec_tf best", b) is not None]
        if full is None or not ok_budgets:
            lines.append(f"(a) {ds}: not tested (need full and a budget >= 16)")
            continue
        best_b = max(ok_budgets, key=lambda b: get(ds, "memrec_tf best", b))
        # the best any MEM-REC variant reaches at >= 16x (by test) for reference
        gaps = {b: get(ds, "memrec_tf best", b) - full for b in ok_budgets}
        passed = [b for b in ok_budgets if gaps[b] >= -0.002]
        lines.append(f"(a) {'PASS' if passed else 'MISS'} {ds}: full {full:.4f}; memrec_tf best "
                     + ", ".join(f"/{b}: {get(ds, 'memrec_tf best', b):.4f} "
                                 f"({gaps[b]:+.4f})" for b in ok_budgets)
                     + f"; needs >= -0.0020 at some budget >= /16 (best /{best_b})")
    # (b) memrec best >= max(hashing, qr) - 0.001 at /4../64.
    for ds in main:
        for b in [b for b in budgets if b <= 64]:
            mr = get(ds, "memrec_tf best", b)
            base = [(m, get(ds, m, b)) for m in ("hashing", "qr") if get(ds, m, b) is not None]
            if mr is None or not base:
                lines.append(f"(b) {ds} /{b}: not tested")
                continue
            bm, bv = max(base, key=lambda x: x[1])
            ok = mr >= bv - 0.001
            lines.append(f"(b) {'PASS' if ok else 'MISS'} {ds} /{b}: memrec_tf best {mr:.4f} vs "
                         f"max(hashing, qr) {bv:.4f} ({bm}); diff {mr - bv:+.4f} (need >= -0.0010)")
    # (c) Frappe /16 within 0.003 of full.
    if "frappe" in summaries:
        full, mr = get("frappe", "full", 1), get("frappe", "memrec_tf best", 16)
        if full is None or mr is None:
            lines.append("(c) frappe /16: not tested")
        else:
            ok = mr >= full - 0.003
            lines.append(f"(c) {'PASS' if ok else 'MISS'} frappe /16: memrec_tf best {mr:.4f} vs "
                         f"full {full:.4f}; diff {mr - full:+.4f} (need >= -0.0030)")
    # (d) every tested budget: memrec best >= hashing and qr.
    for ds in summaries:
        for b in budgets:
            mr = get(ds, "memrec_tf best", b)
            base = [(m, get(ds, m, b)) for m in ("hashing", "qr") if get(ds, m, b) is not None]
            if mr is None or not base:
                continue
            worse = [f"{m} {v:.4f}" for m, v in base if mr < v]
            ok = not worse
            lines.append(f"(d) {'PASS' if ok else 'MISS'} {ds} /{b}: memrec_tf best {mr:.4f} vs "
                         + ", ".join(f"{m} {v:.4f}" for m, v in base)
                         + ("" if ok else f" (below {', '.join(worse)})"))
    return lines


def served_targets(summaries, budgets):
    """Lines 'PASS/MISS ...' for the targets at equal served bytes (raw ids)."""
    lines = []

    def cell(ds, m, b):
        return summaries.get(ds, {}).get((m, b))

    # (q) rounding to int8 after training costs at most 0.001 AUC (mean over seeds).
    for ds, cells in summaries.items():
        for (m, b), c in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            if "pick" in c or c["dtype"] != "int8":
                continue
            cost = c["test_f32"][0] - c["test"][0]
            ok = cost <= ROUNDING_TARGET
            lines.append(f"(q) {'PASS' if ok else 'MISS'} {ds} {m} "
                         f"{'full' if b == 1 else f'/{b}'}: int8 {c['test'][0]:.4f} vs float32 "
                         f"{c['test_f32'][0]:.4f}, cost {cost:+.4f} (need <= "
                         f"{ROUNDING_TARGET:.4f}, n={c['test'][2]})")
    # (f) Frappe at /16: the best configuration within 0.01 of the float32 full table.
    full, best = cell("frappe", "full", 1), cell("frappe", "best served", 16)
    if full is None or best is None:
        lines.append("(f) frappe /16: not tested")
    else:
        gap = best["test"][0] - full["test"][0]
        lines.append(f"(f) {'PASS' if gap >= -RAW_FULL_GAP_TARGET else 'MISS'} frappe /16: best "
                     f"served {best['pick']} {best['test'][0]:.4f} vs full float32 "
                     f"{full['test'][0]:.4f}; diff {gap:+.4f} (need >= "
                     f"{-RAW_FULL_GAP_TARGET:+.4f})")
    # (g) /4../64: the best configuration at least as good as every other method
    # (within 0.001); the paper's MEM-REC in each format is one method, its k
    # picked by validation AUC.
    paper_runs = {m: pick for pick, ks in PAPER_PICKS.items() for m in ks}
    for ds, cells in summaries.items():
        for b in [b for b in budgets if b <= 64]:
            best = cells.get(("best served", b))
            family = paper_runs.get((best or {}).get("pick"), (best or {}).get("pick"))
            others = [(m, c["test"][0]) for (m, bb), c in cells.items()
                      if bb == b and m not in paper_runs and m != family
                      and (m in PAPER_PICKS or m in common.METHODS)]
            if best is None or not others:
                lines.append(f"(g) {ds} /{b}: not tested")
                continue
            om, ov = max(others, key=lambda x: x[1])
            ok = best["test"][0] >= ov - BEST_MARGIN
            lines.append(f"(g) {'PASS' if ok else 'MISS'} {ds} /{b}: best served (by val) "
                         f"{best['pick']} {best['test'][0]:.4f} vs the best other method {om} "
                         f"{ov:.4f}; diff {best['test'][0] - ov:+.4f} (need >= "
                         f"{-BEST_MARGIN:+.4f})")
    return lines


def plot(cells, dataset, budgets, methods, path, full_bytes):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[plot] matplotlib missing (pip install matplotlib, the 'plot' extra): no plot")
        return None
    fig, ax = plt.subplots(figsize=(7.5, 5))
    paper_runs = {m for ks in PAPER_PICKS.values() for m in ks}
    show = [m for m in methods if m not in common.FULL_METHODS and m not in paper_runs]
    for pick, ks in PAPER_PICKS.items():
        if any(m in methods for m in ks):
            show.append(pick)
    for m in show:
        pts = [(cells[(m, b)]["bytes"], cells[(m, b)]["test"]) for b in budgets if (m, b) in cells]
        if not pts:
            continue
        xs = [p[0] for p in pts]
        ys = [p[1][0] for p in pts]
        es = [p[1][1] for p in pts]
        style = "--" if m in ("hashing", "qr") else "-"
        ax.errorbar(xs, ys, yerr=es, marker="o", linestyle=style, capsize=3, label=m)
    full = cells.get(("full", 1))
    if full:
        ax.axhline(full["test"][0], color="k", linewidth=1, label="full")
        ax.axhspan(full["test"][0] - full["test"][1], full["test"][0] + full["test"][1],
                   color="k", alpha=0.08)
        ax.errorbar([full["bytes"]], [full["test"][0]], yerr=[full["test"][1]], color="k",
                    marker="s", capsize=3)
    ax.set_xscale("log")
    ax.set_xlabel("embedding bytes (all tables)")
    ax.set_ylabel("test AUC (mean ± std over seeds)")
    ax.set_title(f"{dataset}: test AUC vs embedding bytes (DLRM, d=16)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def report(results, datasets, budgets, methods, out_dir, stem="accuracy"):
    regime = "raw" if results.get("protocol", {}).get("regime") == RAW_REGIME else "vocabulary"
    summaries, text = {}, []
    for ds in datasets:
        if not any(r["dataset"] == ds for r in results["runs"]):
            continue
        # The methods run on this data set (another may have run more).
        ran = [m for m in methods
               if any(r["dataset"] == ds and r["method"] == m for r in results["runs"])]
        cells = summarize(results["runs"], ds, budgets, ran)
        summaries[ds] = cells
        info = results["datasets"].get(ds, {})
        text.append(table(cells, ds, budgets, ran, regime, info.get("full_bytes")))
        text.append("")
        text.append(rounding_table(cells, ds, budgets, ran))
        png = plot(cells, ds, budgets, ran, os.path.join(out_dir, f"{stem}_{ds}.png"),
                   info.get("full_bytes"))
        if png:
            text.append(f"\nplot: {os.path.relpath(png)}")
        text.append("")
    lines = (served_targets(summaries, budgets) if regime == "raw"
             else targets(summaries, budgets))
    return "\n".join(text), lines, summaries


def same_training(runs, rec):
    """The float32 run that trained exactly `rec`'s model, if any: the full
    table has the same rows whatever format it is served in (full-int8 is
    the full run's model served as int8)."""
    base, dtype = common.split_method(rec["method"])
    if base != "full" or dtype == "float32":
        return None
    for r in runs:
        if (run_key(r) == (rec["dataset"], base, 1, rec["seed"]) and not r.get("error")
                and dtype in r.get("rounded", {})):
            return r
    return None


def served_from(run, data, method, mapping_bytes):
    """`run`'s model served as `method`'s table format: its rounded AUCs, its bytes."""
    config = common.method_config(method, data["vocabulary_size"], data["cardinalities"], 1,
                                  mapping_bytes=mapping_bytes)
    served = run["rounded"][config["table_dtype"]]
    out = {k: v for k, v in run.items() if k not in ("dataset", "method", "budget", "seed")}
    out.update(bytes=config["bytes"], table_bytes=config["table_bytes"],
               mapping_bytes=config["mapping_bytes"], table_dtype=config["table_dtype"],
               val_auc=served["val"], test_auc=served["test"], seconds=0.0,
               served_from=run["method"])
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="frappe,movielens,criteo")
    p.add_argument("--seeds", type=int, default=None,
                   help="seeds per cell (default 5; 3 for criteo)")
    p.add_argument("--first-seed", type=int, default=0,
                   help="run seeds first-seed .. seeds-1 (two processes can share the seeds)")
    p.add_argument("--budgets", default="4,16,64,256", help="compression factors of full")
    p.add_argument("--methods", default=None,
                   help="comma list (default: every method; with --report-only, every "
                        "method of --out)")
    p.add_argument("--quick", action="store_true",
                   help=f"a small check: {QUICK['datasets']}, {QUICK['seeds']} seed, budgets "
                        f"{QUICK['budgets']}, Frappe train cut to {QUICK['frappe_fraction'] * 100:.0f}%%, "
                        f"methods {QUICK['methods']}")
    p.add_argument("--max-epochs", type=int, default=PROTOCOL["max_epochs"],
                   help="epoch cap of early stopping (part of the protocol)")
    p.add_argument("--patience", type=int, default=PROTOCOL["patience"],
                   help="epochs without a better validation AUC before stopping")
    p.add_argument("--lr", type=float, default=PROTOCOL["lr"], help="Adam's learning rate")
    p.add_argument("--batch-size", type=int, default=PROTOCOL["batch_size"],
                   help="training batch (part of the protocol; the zipf set's 1M training "
                        "rows ran at 1024: at 256 a run at /4 took over 10 minutes)")
    p.add_argument("--head-fraction", type=float, default=None,
                   help="memrec-vocab-head: share of the token rows that are head rows; "
                        "memrec-paper-k2-head*: share of the bytes spent on head rows and "
                        "their ids (default for both: sizing.HEAD_FRACTION, the share "
                        "memrec plan recommends)")
    p.add_argument("--regime", choices=REGIMES, default="raw",
                   help="raw: the model reads raw ids, mappings counted; vocabulary: the "
                        "mapping is common to all methods, not counted")
    p.add_argument("--out", default=None)
    p.add_argument("--report-only", action="store_true", help="print tables from --out, no runs")
    args = p.parse_args(argv)
    frappe_fraction = 1.0
    if args.quick:
        args.datasets, args.budgets, args.methods = (QUICK["datasets"], QUICK["budgets"],
                                                      QUICK["methods"])
        args.seeds = args.seeds or QUICK["seeds"]
        frappe_fraction = QUICK["frappe_fraction"]
        args.out = args.out or DEFAULT_OUT[args.regime].replace(".json", "_quick.json")
    args.out = args.out or DEFAULT_OUT[args.regime]
    PROTOCOL.update(max_epochs=args.max_epochs, patience=args.patience, lr=args.lr,
                    batch_size=args.batch_size)
    if args.regime == "raw":
        PROTOCOL.update(regime=RAW_REGIME)
    if args.head_fraction is not None:
        from memrec_tf.sizing import HEAD_FRACTION
        if args.head_fraction != HEAD_FRACTION:  # recorded only when not the default
            PROTOCOL.update(head_fraction=args.head_fraction)
    datasets = [d for d in args.datasets.split(",") if d]
    budgets = [int(b) for b in args.budgets.split(",") if b]
    methods = [m for m in (args.methods or ",".join(common.METHODS)).split(",") if m]
    for m in methods:
        if m not in common.METHODS:
            p.error(f"unknown method {m!r}; have {', '.join(common.METHODS)}")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)

    results = load_results(args.out)
    if args.methods is None and args.report_only:
        methods = [m for m in common.METHODS if any(r["method"] == m for r in results["runs"])]
    if results.get("protocol") != PROTOCOL and not args.report_only:
        moved = args.out.replace(".json", ".other_protocol.json")
        print(f"[warn] {args.out} was written under another protocol: moved to {moved}, "
              "starting over", flush=True)
        os.replace(args.out, moved)
        results = load_results(args.out)
    if results.get("machine") is None:
        results["machine"] = common.machine_info()
    done = {run_key(r) for r in results["runs"]}
    t_start = time.time()
    if not args.report_only:
        import tensorflow as tf
        tf.get_logger().setLevel("ERROR")
        # Seed-major, data sets interleaved, budgets <= /64 of the first 3 seeds first: a run
        # cut short still leaves a usable picture of every data set.
        loaded, todo = {}, []
        for ds in datasets:
            seeds = args.seeds or (3 if ds == "criteo" else 5)
            for s in range(args.first_seed, seeds):
                for m, b in grid(methods, budgets):
                    if (ds, m, b, s) not in done:
                        todo.append((ds, m, b, s))
        order = {ds: i for i, ds in enumerate(datasets)}
        todo.sort(key=lambda t: (0 if t[3] < 3 and t[2] <= 64 else 1 if t[3] < 3 else 2,
                                 t[3], order[t[0]]))
        print(f"{len(todo)} runs to do", flush=True)
        for i, (ds, m, b, s) in enumerate(todo):
            if ds not in loaded:
                data = loaded[ds] = load(ds, frappe_fraction)
                if data is None:
                    continue
                results["datasets"][ds] = dict(
                    rows=data["rows"], vocabulary_size=data["vocabulary_size"],
                    num_features=len(data["cardinalities"]), num_dense=data["num_dense"],
                    full_bytes=data["vocabulary_size"] * 16 * 4,
                    mapping_bytes=data["mapping_bytes"],
                    train_fraction=frappe_fraction if ds == "frappe" else 1.0)
                print(f"[{ds}] V={data['vocabulary_size']} rows={data['rows']}", flush=True)
            data = loaded[ds]
            if data is None:
                continue
            rec = dict(dataset=ds, method=m, budget=b, seed=s)
            mapping = data["mapping_bytes"] if args.regime == "raw" else 0
            same = same_training(results["runs"], rec)
            try:
                if same is not None:
                    rec.update(served_from(same, data, m, mapping))
                else:
                    rec.update(common.train_eval(data, m, b, s, batch_size=args.batch_size,
                                                 max_epochs=args.max_epochs,
                                                 patience=args.patience, lr=args.lr,
                                                 head_fraction=args.head_fraction,
                                                 mapping_bytes=mapping))
            except ValueError as e:  # the method cannot fit the budget
                rec.update(error=str(e))
            results["runs"].append(rec)
            common.write_json(args.out, results)
            if rec.get("error"):
                print(f"[{ds}] {i + 1}/{len(todo)} {m} /{b} seed {s}: n/a ({rec['error'][:80]})",
                      flush=True)
            else:
                print(f"[{ds}] {i + 1}/{len(todo)} {m} /{b} seed {s}: val {rec['val_auc']:.4f} "
                      f"test {rec['test_auc']:.4f} (f32 {rec['test_auc_float32']:.4f}, int8 "
                      f"{rec['rounded']['int8']['test']:.4f}) bytes {rec['bytes']} "
                      f"epochs {rec['epochs']} "
                      f"({rec['seconds']:.0f}s, total {time.time() - t_start:.0f}s)",
                      flush=True)
        results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        common.write_json(args.out, results)
    stem = os.path.splitext(os.path.basename(args.out))[0]
    text, lines, _ = report(results, datasets, budgets, methods, out_dir, stem)
    print()
    print(text)
    print("Targets (protocol fixed, thresholds not adjusted):")
    for line in lines:
        print("  " + line)
    seeds_used = sorted({r["seed"] for r in results["runs"]})
    print(f"\nruns in {args.out}: {len(results['runs'])} (seeds {seeds_used})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
