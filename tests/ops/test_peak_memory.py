"""Peak memory of single calls over 10 million ids stays proportional to
their inputs and outputs.

Each call runs in a fresh child process (benchmarks/bench_memory.py, which
also prints the full table); the children run concurrently. The bounds:

- Forward: growth <= output + ids + 64 MiB. The forward kernel allocates
  only its output (plus a [d] accumulator and two 16-id row blocks per
  worker thread). The ids term admits one transient [N] int64 copy; a
  per-id [N, k] row array (16 bytes per id at k = 2) would not fit, in the
  pooled case or the per-id one. 64 MiB covers allocator and thread slack.
- Forward + backward: growth <= 2 x output + 8 x ids + 64 MiB. The forward
  output and the upstream gradient have the output's shape; the gradient
  kernel keeps per-id scratch (k token rows, the output row, k slot factors,
  kw weight rows and their sort order, the alpha gradients: 52 bytes per id
  at k = 2, kw = 1), within 64 bytes (8 x the int64 id) per id. A dense
  [m, d] gradient or a per-slot [N, k, d] array would not fit.
"""
import concurrent.futures
import os
import sys

import pytest

from conftest import REPO_ROOT

sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))
import bench_memory  # noqa: E402

MiB = 2**20
N = 10_000_000
SLACK = 64 * MiB
CASES = {
    "sum_100k_bags_d16": dict(num_ids=N, combiner="sum", dim=16, num_bags=100_000),
    "none_d4": dict(num_ids=N, combiner="none", dim=4, num_bags=0),
    "sum_100k_bags_d16_backward": dict(num_ids=N, combiner="sum", dim=16, num_bags=100_000,
                                       backward=True),
}


@pytest.fixture(scope="module")
def measured():
    if not os.path.exists("/proc/self/status"):
        pytest.skip("needs /proc to read the peak resident set size")
    with concurrent.futures.ThreadPoolExecutor(len(CASES)) as pool:
        futures = {name: pool.submit(bench_memory.measure_in_child, **spec, timeout=300)
                   for name, spec in CASES.items()}
        return {name: future.result() for name, future in futures.items()}


def _report(r):
    return (f"{r['combiner']} d={r['dim']} backward={r['backward']}: peak growth "
            f"{r['peak_growth'] / MiB:.1f} MiB (ids {r['ids_bytes'] / MiB:.1f} MiB, output "
            f"{r['output_bytes'] / MiB:.1f} MiB; {r['method']})")


@pytest.mark.slow
@pytest.mark.parametrize("case", ["sum_100k_bags_d16", "none_d4"])
def test_forward_peak_is_its_output(measured, case):
    r = measured[case]
    rows = r["num_bags"] if r["combiner"] != "none" else r["num_ids"]
    assert r["output_bytes"] == rows * r["dim"] * 4  # the call completed, full shape
    bound = r["output_bytes"] + r["ids_bytes"] + SLACK
    assert r["peak_growth"] <= bound, _report(r) + f" > bound {bound / MiB:.1f} MiB"
    if r["output_bytes"] > 2 * SLACK:  # the meter sees a large fresh allocation
        assert r["peak_growth"] >= 0.9 * r["output_bytes"], _report(r)


@pytest.mark.slow
def test_forward_backward_peak_is_linear_in_the_ids(measured):
    r = measured["sum_100k_bags_d16_backward"]
    assert r["grad_bytes"] > 0  # sparse gradients came back
    bound = 2 * r["output_bytes"] + 8 * r["ids_bytes"] + SLACK
    assert r["peak_growth"] <= bound, _report(r) + f" > bound {bound / MiB:.1f} MiB"
