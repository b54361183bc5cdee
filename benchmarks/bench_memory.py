"""Peak memory of one MEM-REC lookup: forward, and forward plus backward.

Each measurement runs in a fresh child process, so that no earlier call's
allocations (or TensorFlow's caches) hide or inflate it. The child builds
its inputs, warms the op up on a tiny input, resets the kernel's peak-RSS
counter (writing 5 to /proc/self/clear_refs; where that is refused, a
thread samples VmRSS every millisecond instead), runs one call and reports
the peak growth over the RSS just before the call, next to the bytes of its
inputs and outputs:

    python benchmarks/bench_memory.py                  # 1M and 10M ids, fused op
    python benchmarks/bench_memory.py --ids 1000000 --path core

The ids live in memory before the call and are not counted in the growth;
the output (and, with the backward pass, the upstream gradient and the
sparse table gradients) are.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
MB = 2.0**20
# (label, combiner, d, bags): pooled into 100k bags, or one row per id.
SHAPES = [("sum, 100k bags, d=16", "sum", 16, 100_000), ("none, d=4", "none", 4, 0)]


def _status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak():
    """Resets VmHWM to the current RSS; False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _Sampler:
    """Fallback peak meter: polls VmRSS from a thread."""

    def __init__(self):
        self.peak = _status("VmRSS")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _status("VmRSS"))
            time.sleep(0.001)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _status("VmRSS"))


def measure(num_ids, combiner, dim, num_bags, backward=False, path="fused", k=2,
            num_token_rows=2**16, seed=0):
    """Runs one lookup in this process; returns a dict of byte counts.

    Meant for a fresh process (see `measure_in_child`): the peak is the
    process's, so earlier allocations in the same process would blur it.
    """
    import gc

    import numpy as np
    import tensorflow as tf

    from memrec_tf import ops
    from memrec_tf.ops import core
    from memrec_tf.ops.signature import Signature

    lookup = {"fused": ops.lookup, "core": core.lookup}[path]
    sig = Signature(num_hashes=k, num_weight_hashes=1, seed=seed)
    table = tf.Variable(tf.random.uniform([num_token_rows, dim], -0.05, 0.05, seed=seed))
    wtable = tf.Variable(tf.ones([num_token_rows, 1]))
    no_weights = tf.zeros([0], tf.float32)

    def splits_for(n, bags):
        if combiner == "none":
            return tf.zeros([0], tf.int64)
        return tf.constant(np.linspace(0, n, bags + 1).astype(np.int64))

    def call(ids, splits):
        if not backward:
            return [lookup(ids, splits, no_weights, table, wtable, sig, combiner=combiner)]
        with tf.GradientTape() as tape:
            out = lookup(ids, splits, no_weights, table, wtable, sig, combiner=combiner)
            loss = tf.reduce_sum(out)
        return [out, *tape.gradient(loss, [table, wtable])]

    # Warm-up: loads the library, creates the kernels and thread pools.
    call(tf.range(64, dtype=tf.int64), splits_for(64, 4))
    ids = tf.constant(np.random.default_rng(seed).integers(
        -(2**63), 2**63 - 1, num_ids, dtype=np.int64, endpoint=True))
    splits = splits_for(num_ids, num_bags)
    gc.collect()
    before = _status("VmRSS")
    start = time.perf_counter()
    if _reset_peak():
        method = "VmHWM after clear_refs"
        results = call(ids, splits)
        peak = _status("VmHWM")
    else:
        method = "VmRSS sampled every 1 ms"
        with _Sampler() as sampler:
            results = call(ids, splits)
        peak = sampler.peak
    seconds = time.perf_counter() - start
    out = results[0]
    grad_bytes = 0
    for grad in results[1:]:
        if isinstance(grad, tf.IndexedSlices):
            grad_bytes += grad.values.numpy().nbytes + grad.indices.numpy().nbytes
        elif grad is not None:
            grad_bytes += grad.numpy().nbytes
    return dict(num_ids=num_ids, combiner=combiner, dim=dim, num_bags=num_bags,
                backward=backward, path=path, method=method, seconds=seconds,
                ids_bytes=num_ids * 8, splits_bytes=int(splits.shape[0]) * 8,
                output_bytes=int(np.prod(out.shape)) * 4, grad_bytes=grad_bytes,
                table_bytes=num_token_rows * (dim + 1) * 4,
                rss_before=before, peak_growth=max(0, peak - before),
                process_peak=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def measure_in_child(num_ids, combiner, dim, num_bags, backward=False, path="fused",
                     timeout=600, env=None):
    """`measure` in a fresh Python process; returns its dict."""
    spec = json.dumps(dict(num_ids=num_ids, combiner=combiner, dim=dim, num_bags=num_bags,
                           backward=backward, path=path))
    child_env = dict(os.environ if env is None else env, TF_CPP_MIN_LOG_LEVEL="2")
    child_env["PYTHONPATH"] = os.pathsep.join(
        [REPO_ROOT] + ([child_env["PYTHONPATH"]] if child_env.get("PYTHONPATH") else []))
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", spec],
                          cwd=REPO_ROOT, env=child_env, capture_output=True, text=True,
                          timeout=timeout)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"measurement {spec} failed ({proc.returncode}):\n"
                           f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ids", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--path", choices=["fused", "core"], default="fused")
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(measure(**json.loads(args.child))), flush=True)
        return 0
    rows = []
    header = (f"{'ids':>10}  {'shape':<22} {'ids MB':>7} {'out MB':>7} {'fwd peak MB':>11} "
              f"{'fwd B/id':>8} {'fwd+bwd peak MB':>15} {'f+b B/id':>8} {'grads MB':>8} "
              f"{'fwd s':>6} {'f+b s':>6}")
    print(f"memrec_tf peak memory growth of one {args.path} lookup "
          "(k=2, kw=1, m=65536, float32; growth over the RSS before the call)")
    print(header)
    print("-" * len(header))
    for n in args.ids:
        for label, combiner, dim, bags in SHAPES:
            fwd = measure_in_child(n, combiner, dim, bags, False, args.path)
            both = measure_in_child(n, combiner, dim, bags, True, args.path)
            rows.append({"forward": fwd, "forward_backward": both})
            print(f"{n:>10}  {label:<22} {fwd['ids_bytes'] / MB:7.1f} "
                  f"{fwd['output_bytes'] / MB:7.1f} {fwd['peak_growth'] / MB:11.1f} "
                  f"{fwd['peak_growth'] / n:8.1f} {both['peak_growth'] / MB:15.1f} "
                  f"{both['peak_growth'] / n:8.1f} {both['grad_bytes'] / MB:8.1f} "
                  f"{fwd['seconds']:6.2f} {both['seconds']:6.2f}", flush=True)
    print(f"measured with: {rows[0]['forward']['method']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
