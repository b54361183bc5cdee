"""The `memrec` command: train, evaluate, export and plan MEM-REC models.

    memrec train                        # synthetic Criteo-like data, DLRM, MEM-REC
    memrec train --train day_0.tsv --eval day_1.tsv --output run/   # format inferred
    memrec evaluate --model-dir run/ --data day_2.tsv
    memrec export --model-dir run/ --output export/ --mode core
    memrec plan --cardinalities 1000000,50000,30 --compression 64
    memrec saved-model-cli show --dir export/ --all

Bad arguments and missing files end with one line on stderr and exit 2;
a failed run ends with one line and exit 1.

This module is the command's front: its arguments, parsed without importing
TensorFlow (so `memrec --help` answers at once), and TensorFlow's start-up
logging kept off the terminal. The commands themselves are in
`memrec_tf.app.cli`. The names it offers (formats, models, embeddings,
optimizers, strategies) are those memrec_tf implements; a test holds them
equal.
"""
import argparse
import contextlib
import os
import re
import sys
import tempfile

FORMATS = ("synthetic", "criteo", "libfm", "csv")
MODELS = ("dlrm", "dcn")
EMBEDDINGS = ("memrec", "memrec_per_feature", "full", "hashing", "qr", "memrec_vocabulary",
              "memrec_vocabulary_head", "qr_vocabulary", "full_vocabulary")
OPTIMIZERS = ("adagrad", "adam", "sgd")
STRATEGIES = ("default", "mirrored", "multi-worker")
TABLE_DTYPES = ("float32", "bfloat16", "int8")
# The share of a file's lines that may be malformed before a run stops.
DEFAULT_MAX_REJECTED = 0.01

# What TensorFlow's C++ runtime logs while it starts: lines in glog's format
# ("I0000 00:00:17.. 123 port.cc:153] ..."), absl's notice that they precede
# its initialisation, and cpu_feature_guard's second line. TensorFlow 2.21
# prints them before absl reads TF_CPP_MIN_LOG_LEVEL, so that variable alone
# does not hide them.
_START_UP_LINE = re.compile(
    r"^(?:[IWE]\d{4} \d\d:\d\d:[\d.]+\s+\d+ [\w.]+:\d+\] "
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|To enable the following instructions: .* rebuild TensorFlow)")


@contextlib.contextmanager
def tensorflow_start_up_hidden():
    """Hides TensorFlow's C++ start-up lines written to stderr in this block.

    Stderr (file descriptor 2, where the C++ runtime writes) goes to a
    temporary file while the block runs; afterwards every captured line that
    is not a start-up log line is written to the real stderr, so errors and
    Python warnings still reach the user.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode("utf-8", "replace").splitlines(True):
                if not _START_UP_LINE.match(line):
                    sys.stderr.write(line)
            sys.stderr.flush()


class _Parser(argparse.ArgumentParser):
    """argparse, but errors are one line without the usage block."""

    def error(self, message):
        self.exit(2, f"memrec: error: {message}\n")


def _int_list(text):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _share(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a share in [0, 1], got {text!r}")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a share in [0, 1], got {text!r}")
    return value


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}")
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive value, got {text!r}")
        return value
    return parse


def _add_data_args(p, file_flag):
    p.add_argument("--format", choices=FORMATS,
                   help="input format (default: inferred from the data file; the built-in "
                        "synthetic generator when no file is given)")
    p.add_argument(file_flag, dest="data_file", metavar="FILE",
                   help="training data" if file_flag == "--train" else "data to score")
    p.add_argument("--columns", help="csv: label=NAME,categorical=A,B,...,numeric=X,Y,...")
    p.add_argument("--delimiter", help="csv: field delimiter (default: sniffed from the header)")
    p.add_argument("--libfm-fields", type=_positive(int),
                   help="libfm: index:value pairs per line, one per field")
    p.add_argument("--label-threshold", type=float,
                   help="csv: labels >= this are 1, the others 0 (e.g. 4 for 1-5 ratings)")
    p.add_argument("--on-error", choices=("skip", "raise"), default="skip",
                   help="malformed lines: skip and count them (default) or stop")
    p.add_argument("--max-rejected", type=_share, default=DEFAULT_MAX_REJECTED,
                   help="stop when more than this share of a file's lines are malformed "
                        f"(default {DEFAULT_MAX_REJECTED})")
    p.add_argument("--cardinalities", type=_int_list,
                   help="distinct values per categorical feature (default: counted from the data)")
    p.add_argument("--synthetic-preset", default="small",
                   help="synthetic cardinalities: tiny, small or terabyte")
    p.add_argument("--synthetic-rows", type=_positive(int), default=200_000)
    p.add_argument("--synthetic-eval-rows", type=_positive(int), default=50_000)
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the synthetic rows and the model's initial weights")


def build_parser():
    parser = _Parser(prog="memrec", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train a DLRM or DCN model")
    _add_data_args(p, "--train")
    p.add_argument("--eval", metavar="FILE", help="evaluation data (AUC, log loss)")
    p.add_argument("--model", choices=MODELS, default="dlrm")
    p.add_argument("--embedding", choices=EMBEDDINGS, default="memrec",
                   help="*_vocabulary*: count the training file's values and map raw ids to "
                        "dense indices by frequency inside the model (see memrec plan)")
    p.add_argument("--embedding-dim", type=_positive(int), default=16)
    p.add_argument("--compression", type=_positive(float), default=16.0,
                   help="size the embedding to float32 full-table bytes / this, counting every "
                        "byte it serves (default 16)")
    p.add_argument("--table-dtype", choices=TABLE_DTYPES, default="float32",
                   help="MEM-REC: the format its token tables are served in. Training stays "
                        "float32; the budget counts the served bytes, and the model is "
                        "evaluated as served (int8: a scale per row, about 3x the rows of "
                        "float32 in the same bytes)")
    p.add_argument("--num-token-rows", type=_positive(int), help="memrec: m (overrides sizing)")
    p.add_argument("--num-weight-rows", type=_positive(int), help="memrec: m_w")
    p.add_argument("--num-hashes", type=_positive(int), help="memrec: k")
    p.add_argument("--num-weight-hashes", type=int, help="memrec: k_w (0: no weight table)")
    p.add_argument("--weight-mode", choices=("scalar", "per_hash"))
    p.add_argument("--epochs", type=_positive(int),
                   help="train this many epochs (default: until the AUC on held-out training "
                        "batches stops improving, at most 50 epochs; the best weights are kept)")
    p.add_argument("--batch-size", type=_positive(int),
                   help="per replica (default 1024; smaller for a file of fewer than 32 such "
                        "batches, so that an epoch takes at least about 32 steps)")
    p.add_argument("--learning-rate", type=_positive(float), default=1e-3)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
    p.add_argument("--fused-update", action="store_true",
                   help="MEM-REC: update the token tables inside the gradient kernel with "
                        "--optimizer and --learning-rate, instead of writing their gradient "
                        "out for the optimizer (see README)")
    p.add_argument("--hash-seed", type=int, default=0,
                   help="seeds the embedding's hash functions (default 0)")
    p.add_argument("--strategy", choices=STRATEGIES, default="default",
                   help="mirrored: all local devices; multi-worker: workers from TF_CONFIG")
    p.add_argument("--output", default="runs/train", help="directory for the model and metrics")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a finished run, or an unfinished one with other settings")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--verbose", action="store_true",
                   help="also show TensorFlow's and Keras' warnings")

    p = sub.add_parser("evaluate", help="score a trained model")
    p.add_argument("--model-dir", required=True)
    _add_data_args(p, "--data")
    p.add_argument("--batch-size", type=_positive(int), help="default: the training run's")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("export", help="write a SavedModel for TensorFlow Serving")
    p.add_argument("--model-dir", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--mode", choices=("core", "fused"), default="core",
                   help="core: built-in ops only (stock TF Serving); fused: the fused op")
    p.add_argument("--table-dtype", choices=TABLE_DTYPES,
                   help="how MEM-REC token tables are stored (default: the training run's "
                        "--table-dtype)")
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("plan", help="propose MEM-REC sizes for a byte budget")
    p.add_argument("--cardinalities", type=_int_list,
                   help="distinct values per categorical feature")
    p.add_argument("--format", choices=("criteo", "libfm", "csv"),
                   help="the format of --data (default: inferred from the file)")
    p.add_argument("--data", help="file to count cardinalities from")
    p.add_argument("--columns", help="csv: label=NAME,categorical=...,numeric=...")
    p.add_argument("--delimiter")
    p.add_argument("--libfm-fields", type=_positive(int))
    group = p.add_mutually_exclusive_group()
    group.add_argument("--budget-bytes", type=_positive(int))
    group.add_argument("--compression", type=_positive(float), default=16.0)
    p.add_argument("--embedding-dim", type=_positive(int), default=16)
    p.add_argument("--num-hashes", type=_positive(int), default=2)
    p.add_argument("--table-dtype", choices=TABLE_DTYPES, default="float32",
                   help="the format the tables are served in (the budget counts those bytes)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")

    sub.add_parser("saved-model-cli", add_help=False,
                   help="TensorFlow's saved_model_cli with the op library loaded")
    return parser


def main(argv=None):
    """Runs `memrec ARGS`; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "saved-model-cli":
        with tensorflow_start_up_hidden():
            from memrec_tf.app import saved_model_cli
        return saved_model_cli.main(argv[1:])
    args = build_parser().parse_args(argv)
    verbose = getattr(args, "verbose", False)
    if not verbose:
        # 3: not even ERROR lines (oneDNN logs its int64 fallback as one); a
        # failure reaches the user as a Python exception anyway.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with contextlib.nullcontext() if verbose else tensorflow_start_up_hidden():
        import tensorflow as tf
        from memrec_tf.app import cli

        tf.config.list_physical_devices()  # the device scan logs too
    return cli.run(args)


if __name__ == "__main__":
    sys.exit(main())
