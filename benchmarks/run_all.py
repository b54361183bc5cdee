"""Regenerates every benchmark result and writes benchmarks/results/summary.md.

    python benchmarks/run_all.py            # everything (hours on 2 CPU cores)
    python benchmarks/run_all.py --quick    # a check, under 10 minutes on 2 cores
    python benchmarks/run_all.py --summary-only   # summary.md from the saved JSON

Full run:
  1. bench_lookup.py (40M-row full table, 15 rounds) -> results/lookup.json
  2. accuracy_vs_memory.py (Frappe and MovieLens-100K: 5 seeds, Criteo
     sample: 3 seeds; budgets full/4, /16, /64, /256 in served bytes; all
     methods; raw ids, mappings counted) -> results/accuracy_served.json,
     results/accuracy_served_<dataset>.png. The summary also reports
     results/accuracy.json (the vocabulary-layer regime, `--regime
     vocabulary`) when it is there.
  3. bench_scale.py (bytes at Terabyte scale, throughput at N=500,000 rows
     per feature, synthetic accuracy at 8 x 2M values) -> results/scale.json

--quick (what it covers, exactly):
  1. bench_lookup.py --full-rows 4000000 --rounds 5 -> results/lookup_quick.json
  2. accuracy_vs_memory.py --quick: Criteo sample and 30% of Frappe's train
     split (dev and test whole), 1 seed, budgets /16 and /64, methods full,
     hashing, qr, memrec-paper-k2, memrec-paper-k2-int8, memrec-vocab,
     memrec-vocab-head -> results/accuracy_served_quick.json (+ plots)
  3. bench_scale.py --quick: (a) bytes; (b) throughput at N=100,000, 3
     windows of 3 steps; (c) 4 features x 500,000 values, 60,000 train rows,
     /16, 3 epochs -> results/scale_quick.json
  and results/summary_quick.md.
Quick numbers are a smoke test of the pipeline, not evidence: one seed,
a subset of Frappe, few epochs on the synthetic set.

Accuracy runs are resumable (runs already in the JSON are skipped): delete
the JSON to start over.
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
sys.path.insert(0, HERE)


def run(cmd, log):
    print(f"$ {' '.join(cmd)}", flush=True)
    t = time.time()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              cwd=os.path.dirname(HERE))
        f.write(proc.stdout)
    keep = [line for line in proc.stdout.splitlines()
            if not any(s in line for s in ("I0000", "W0000", "E0000", "WARNING: All log",
                                           "oneDNN", "cpu_feature_guard", "instructions,",
                                           "UserWarning", "data_adapter"))]
    print("\n".join(keep[-60:]), flush=True)
    print(f"[{time.time() - t:.0f}s, exit {proc.returncode}, log {os.path.relpath(log)}]",
          flush=True)
    return proc.returncode, "\n".join(keep)


def summary(quick, lookup_text):
    import accuracy_vs_memory as acc
    suffix = "_quick" if quick else ""
    parts = [f"# memrec_tf benchmark summary{' (--quick: smoke test, not evidence)' if quick else ''}",
             "", f"Generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')} by "
             f"`python benchmarks/run_all.py{' --quick' if quick else ''}`.", ""]
    for stem, title in ((f"accuracy_served{suffix}", "raw ids, equal served bytes"),
                        (f"accuracy{suffix}", "vocabulary-layer regime")):
        acc_path = os.path.join(RESULTS, f"{stem}.json")
        if not os.path.exists(acc_path):
            continue
        with open(acc_path) as f:
            res = json.load(f)
        budgets = sorted({int(r["budget"]) for r in res["runs"] if int(r["budget"]) > 1})
        methods = [m for m in acc.common.METHODS if any(r["method"] == m for r in res["runs"])]
        datasets = [d for d in acc.DATASETS if any(r["dataset"] == d for r in res["runs"])]
        text, lines, _ = acc.report(res, datasets, budgets, methods, RESULTS, stem)
        m = res.get("machine") or {}
        seeds = {d: sorted({r["seed"] for r in res["runs"] if r["dataset"] == d})
                 for d in datasets}
        parts += [f"## Accuracy vs embedding memory ({title})", "",
                  f"Protocol: {json.dumps(res.get('protocol'))}", "",
                  f"Machine: {m.get('cpu')}, {m.get('cpu_count')} cores (shared), TensorFlow "
                  f"{m.get('tensorflow')}. Seeds per data set: {seeds}. Runs: "
                  f"{len(res['runs'])}; finished: {res.get('finished', 'NO (partial)')}.", "",
                  text, "", "### Targets (PASS/MISS, thresholds as stated in the issue)", "",
                  "```", *lines, "```", ""]
    scale_path = os.path.join(RESULTS, f"scale{suffix}.json")
    if os.path.exists(scale_path):
        with open(scale_path) as f:
            res = json.load(f)
        md = res.get("markdown") or "(incomplete run)"
        parts += ["## Scale (bench_scale.py)", "", md, ""]
    if lookup_text:
        parts += ["## Lookup speed (bench_lookup.py)", "", lookup_text, ""]
    else:
        parts += ["## Lookup speed (bench_lookup.py)", "",
                  f"Not run in this regeneration (no results/lookup{suffix}.txt); "
                  "`python benchmarks/run_all.py --skip accuracy,scale` runs it.", ""]
    out = os.path.join(RESULTS, f"summary{suffix}.md")
    with open(out, "w") as f:
        f.write("\n".join(parts))
    print(f"wrote {os.path.relpath(out)}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--summary-only", action="store_true")
    p.add_argument("--skip", default="", help="comma list of lookup,accuracy,scale to skip")
    args = p.parse_args(argv)
    os.makedirs(RESULTS, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    skip = set(args.skip.split(","))
    py = sys.executable
    lookup_text = ""
    lookup_log = os.path.join(RESULTS, f"lookup{suffix}.txt")
    t0 = time.time()
    if not args.summary_only:
        if "lookup" not in skip:
            cmd = [py, os.path.join(HERE, "bench_lookup.py"), "--json",
                   os.path.join(RESULTS, f"lookup{suffix}.json")]
            if args.quick:
                cmd += ["--full-rows", "4000000", "--rounds", "5"]
            _, text = run(cmd, lookup_log)
            lookup_text = "\n".join(l for l in text.splitlines()
                                    if l.startswith(("|", "#")) or "target" in l)
            with open(lookup_log, "w") as f:
                f.write(lookup_text + "\n")
        if "accuracy" not in skip:
            cmd = [py, os.path.join(HERE, "accuracy_vs_memory.py")]
            cmd += ["--quick"] if args.quick else []
            run(cmd, os.path.join("/tmp", f"memrec_accuracy{suffix}.log"))
        if "scale" not in skip:
            cmd = [py, os.path.join(HERE, "bench_scale.py")] + (["--quick"] if args.quick else [])
            run(cmd, os.path.join("/tmp", f"memrec_scale{suffix}.log"))
    if not lookup_text and os.path.exists(lookup_log):
        with open(lookup_log) as f:
            lookup_text = f.read()
    summary(args.quick, lookup_text)
    print(f"run_all{' --quick' if args.quick else ''}: {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
