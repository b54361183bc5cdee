"""The `memrec` command: train, evaluate, export and plan MEM-REC models.

    memrec train                        # synthetic Criteo-like data, DLRM, MEM-REC
    memrec train --train day_0.tsv --eval day_1.tsv --output run/   # format inferred
    memrec evaluate --model-dir run/ --data day_2.tsv
    memrec export --model-dir run/ --output export/ --mode core
    memrec plan --cardinalities 1000000,50000,30 --compression 64
    memrec saved-model-cli show --dir export/ --all

Bad arguments and missing files end with one line on stderr and exit 2;
a failed run ends with one line and exit 1.
"""
import argparse
import gc
import json
import os
import sys
import warnings

# TensorFlow's C++ start-up chatter is not the user's business here.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


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
    from memrec_tf.app.sources import DEFAULT_MAX_REJECTED, FORMATS

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


def _data_options(args, eval_file=None):
    from memrec_tf.app.sources import DataOptions

    return DataOptions(format=args.format, train=getattr(args, "data_file", None)
                       if eval_file is None else None,
                       eval=eval_file if eval_file is not None else getattr(args, "eval", None),
                       columns=args.columns, delimiter=args.delimiter,
                       libfm_fields=args.libfm_fields, on_error=args.on_error,
                       label_threshold=args.label_threshold, max_rejected=args.max_rejected,
                       cardinalities=args.cardinalities,
                       synthetic_preset=args.synthetic_preset,
                       synthetic_rows=args.synthetic_rows,
                       synthetic_eval_rows=args.synthetic_eval_rows, seed=args.seed)


def build_parser():
    from memrec_tf.models import MODELS
    from memrec_tf.app.building import EMBEDDINGS, OPTIMIZERS
    from memrec_tf.app.training import STRATEGIES

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
                   help="size the embedding to full-table bytes / this (default 16)")
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
    p.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adam")
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
    p.add_argument("--json", action="store_true", help="print the plan as JSON")

    sub.add_parser("saved-model-cli", add_help=False,
                   help="TensorFlow's saved_model_cli with the op library loaded")
    return parser


def _print_metrics(metrics):
    def fmt(v):
        return "n/a" if v is None else f"{v:.4f}"
    print(f"eval AUC {fmt(metrics.get('auc'))}  log loss {fmt(metrics.get('logloss'))}")
    if "embedding_bytes" in metrics:
        full = metrics["full_embedding_bytes"]
        used = metrics["embedding_bytes"]
        print(f"embedding bytes {used:,} replacing full tables of {full:,} bytes "
              f"({full / used:.1f}x smaller)")
    if metrics.get("examples_per_second"):
        print(f"training throughput {metrics['examples_per_second']:,.0f} examples/s")
    data = metrics.get("data") or {}
    if data.get("rows_rejected"):
        print(f"malformed lines skipped: {data['rows_rejected']} (rows read: {data['rows_read']}); "
              "first: " + "; ".join(data.get("first_rejects", [])))


def _cmd_train(args):
    from memrec_tf.app import building, training
    from memrec_tf.app.errors import UsageError

    overrides = {"num_token_rows": args.num_token_rows, "num_weight_rows": args.num_weight_rows,
                 "num_hashes": args.num_hashes, "num_weight_hashes": args.num_weight_hashes,
                 "weight_mode": args.weight_mode}
    if (args.embedding not in building.MEMREC_EMBEDDINGS
            and any(v is not None for v in overrides.values())):
        raise UsageError("--num-token-rows, --num-hashes and the other MEM-REC sizes apply "
                         f"only to --embedding {' / '.join(building.MEMREC_EMBEDDINGS)}")
    if args.format not in (None, "synthetic") and args.data_file is None:
        raise UsageError(f"--format {args.format} needs --train FILE")
    if args.data_file is None and args.eval is not None:
        raise UsageError("--eval FILE needs --train FILE (the data to train on)")
    metrics = training.train(
        _data_options(args), args.output, model_kind=args.model, embedding=args.embedding,
        embedding_dim=args.embedding_dim, compression=args.compression,
        embedding_overrides=overrides, epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.learning_rate, optimizer=args.optimizer, strategy=args.strategy,
        hash_seed=args.hash_seed, verbose=0 if args.quiet else 1, overwrite=args.overwrite)
    _print_metrics(metrics)
    print(f"model and metrics written to {args.output}")
    if metrics.get("eval_error"):
        print(f"memrec: error: evaluation failed ({metrics['eval_error']}); the trained model "
              f"is in {args.output}: score it with memrec evaluate --model-dir {args.output} "
              "--data FILE", file=sys.stderr)
        return 1
    return 0


def _cmd_evaluate(args):
    from memrec_tf.app import training
    from memrec_tf.app.errors import UsageError

    options = None
    if args.data_file is not None or args.format not in (None, "synthetic"):
        if args.data_file is None:
            raise UsageError(f"--format {args.format} needs --data FILE")
        options = _data_options(args, eval_file=args.data_file)
    metrics = training.evaluate(args.model_dir, options, batch_size=args.batch_size,
                                verbose=0 if args.quiet else 1)
    _print_metrics(metrics)
    print(json.dumps({k: metrics[k] for k in ("auc", "logloss", "embedding_bytes",
                                              "full_embedding_bytes")}))


def _cmd_export(args):
    from memrec_tf import saved_model as export_lib
    from memrec_tf.app import runs
    from memrec_tf.app.errors import UsageError

    model = runs.load_model(args.model_dir)
    try:
        export_lib.export(model, args.output, mode=args.mode, overwrite=args.overwrite)
    except FileExistsError as e:
        raise UsageError(f"{e} (pass --overwrite to replace it)") from e
    print(f"exported ({args.mode}) to {args.output}")


def _cmd_plan(args):
    from memrec_tf import data, layers
    from memrec_tf.app import planning, sources
    from memrec_tf.app.errors import UsageError

    cards, value_counts = args.cardinalities, None
    if cards is None:
        if not args.data:
            raise UsageError("give --cardinalities, or --data FILE to count them")
        options = sources.DataOptions(format=args.format, train=args.data, columns=args.columns,
                                      delimiter=args.delimiter,
                                      libfm_fields=args.libfm_fields).resolved()
        counted, _, _ = sources.count_training_values(options)
        # As `memrec train` sizes its layers: the counted values plus one index
        # per feature for values never seen in training.
        cards = data.counted_cardinalities(counted)
        value_counts = layers.frequency_index(counted)[3]
    plan = planning.plan(cards, args.embedding_dim, budget=args.budget_bytes,
                         compression=None if args.budget_bytes else args.compression,
                         num_hashes=args.num_hashes, value_counts=value_counts)
    print(json.dumps(plan, indent=2) if args.json else planning.format_plan(plan))


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "saved-model-cli":
        from memrec_tf.app import saved_model_cli

        return saved_model_cli.main(argv[1:])
    args = build_parser().parse_args(argv)
    import tensorflow as tf

    if not getattr(args, "verbose", False):
        # TensorFlow's and Keras' Python warnings (not memrec_tf's own).
        for module in ("keras", "tensorflow", "tf_keras"):
            warnings.filterwarnings("ignore", module=module)
        tf.get_logger().setLevel("ERROR")

    from memrec_tf.app.errors import UsageError
    from memrec_tf.data import MalformedLineError

    commands = {"train": _cmd_train, "evaluate": _cmd_evaluate, "export": _cmd_export,
                "plan": _cmd_plan}
    code = 0
    try:
        code = commands[args.command](args) or 0
    except UsageError as e:
        print(f"memrec: error: {e}", file=sys.stderr)
        code = 2
    except (MalformedLineError, ValueError, OSError) as e:
        print(f"memrec: error: {e}", file=sys.stderr)
        code = 1
    except tf.errors.OpError as e:
        lines = [line for line in e.message.splitlines() if line.strip()]
        print(f"memrec: error: {lines[0].strip() if lines else type(e).__name__}",
              file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("memrec: interrupted", file=sys.stderr)
        code = 130
    # The exception is gone; free what its traceback held now. A tf.data
    # iterator freed at interpreter exit instead can wait forever for its
    # prefetch thread, which can no longer take the GIL.
    gc.collect()
    return code


if __name__ == "__main__":
    sys.exit(main())
