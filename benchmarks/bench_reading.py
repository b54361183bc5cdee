"""Reading time of one line without a newline, by its length: linear, not quadratic.

For each size (default 16, 32, 64, 128 and 256 MiB) a file holding one line
of that many b"x" bytes and no newline is read in one pass by
`CriteoTSVReader(...).read_all()`, `--repeats` times (median). Two columns:

  * skipped: the default `max_line_bytes` (16 MiB). A longer line is
    rejected ("line longer than N bytes") and dropped as it streams; a line
    of exactly 16 MiB is still kept.
  * kept: `max_line_bytes` above the longest size. The line is joined whole
    and handed to the parser, which rejects it (1 field, not 40); the time
    includes that parse attempt.

Linear reading shows as a flat seconds-per-GiB column. The files are
written to a temporary folder (or --dir) and removed afterwards.

    python benchmarks/bench_reading.py
    python benchmarks/bench_reading.py --sizes 16,32 --repeats 5 --json out.json
"""
import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time

# Quiet TensorFlow's C++ start-up logging; must precede its import.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import machine_info  # noqa: E402

from memrec_tf.data import MAX_LINE_BYTES, CriteoTSVReader  # noqa: E402

MIB = 1 << 20


def write_line(path: str, mib: int):
    """Writes one line of `mib` MiB of b"x", without a newline."""
    chunk = b"x" * MIB
    with open(path, "wb") as fh:
        for _ in range(mib):
            fh.write(chunk)


def read_once(path: str, max_line_bytes: int) -> float:
    """Seconds for one pass; checks the line was rejected, as expected."""
    reader = CriteoTSVReader(path, max_line_bytes=max_line_bytes)
    start = time.perf_counter()
    reader.read_all()
    seconds = time.perf_counter() - start
    stats = reader.stats
    if (stats.rows_read, stats.rows_rejected) != (0, 1):
        raise RuntimeError(f"{path}: expected one rejected line, got {stats!r}")
    return seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default="16,32,64,128,256",
                        help="line lengths in MiB, comma separated")
    parser.add_argument("--repeats", type=int, default=3, help="passes per size (median)")
    parser.add_argument("--dir", default=None, help="folder for the files (default: a temp one)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    machine = machine_info()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    kept_limit = max(sizes) * MIB
    # Every pass rejects its line; the readers would log each one.
    logging.getLogger("memrec_tf.data").setLevel(logging.ERROR)

    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        for mib in sizes:
            path = os.path.join(folder, f"line_{mib}MiB.tsv")
            write_line(path, mib)
            read_once(path, MAX_LINE_BYTES)  # warm-up: page cache, first-call costs
            skipped, kept = [], []
            for _ in range(args.repeats):  # interleaved, so drift hits both alike
                skipped.append(read_once(path, MAX_LINE_BYTES))
                kept.append(read_once(path, kept_limit))
            os.remove(path)
            rows.append({"mib": mib, "skipped_s": statistics.median(skipped),
                         "kept_s": statistics.median(kept), "skipped_all": skipped,
                         "kept_all": kept})

    print(f"One newline-free line, CriteoTSVReader.read_all(), median of {args.repeats}; "
          f"skipped: max_line_bytes={MAX_LINE_BYTES} (default), kept: {kept_limit}\n")
    print("| line (MiB) | skipped (s) | skipped (s/GiB) | kept (s) | kept (s/GiB) |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        per_gib = 1024 / r["mib"]
        print(f"| {r['mib']} | {r['skipped_s']:.3f} | {r['skipped_s'] * per_gib:.2f} "
              f"| {r['kept_s']:.3f} | {r['kept_s'] * per_gib:.2f} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": machine, "repeats": args.repeats,
                       "max_line_bytes": MAX_LINE_BYTES, "kept_limit": kept_limit,
                       "results": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
