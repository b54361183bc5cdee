"""The commands of `memrec` (train, evaluate, export, plan).

The command's arguments are parsed by the top-level module `memrec_cli`,
without TensorFlow; `run(args)` carries them out. `main(argv)` (and
`python -m memrec_tf.app.cli`) parse and run in one call.
"""
import gc
import json
import sys
import warnings

import memrec_cli

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
                       synthetic_eval_rows=args.synthetic_eval_rows, seed=args.seed,
                       **({} if eval_file is None else {"eval_flag": "--data"}))


def _print_metrics(metrics):
    def fmt(v):
        return "n/a" if v is None else f"{v:.4f}"
    served = metrics.get("table_dtype", "float32")
    line = f"eval AUC {fmt(metrics.get('auc'))}  log loss {fmt(metrics.get('logloss'))}"
    if "auc_float32" in metrics:
        line += (f"  (tables served as {served}; as trained in float32: AUC "
                 f"{fmt(metrics['auc_float32'])}, log loss {fmt(metrics['logloss_float32'])})")
    print(line)
    if "embedding_bytes" in metrics:
        full = metrics["full_embedding_bytes"]
        used = metrics["embedding_bytes"]
        mapping = metrics.get("vocabulary_mapping_bytes", 0)
        parts = f"tables served as {served}"
        if mapping:
            parts = (f"{metrics.get('embedding_table_bytes', used):,} of {parts} + "
                     f"{mapping:,} of id->index mapping")
        print(f"embedding bytes {used:,} ({parts}) replacing float32 full tables of "
              f"{full:,} bytes ({full / used:.1f}x smaller)")
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
        hash_seed=args.hash_seed, verbose=0 if args.quiet else 1, overwrite=args.overwrite,
        table_dtype=args.table_dtype, fused_update=args.fused_update)
    _print_metrics(metrics)
    print(f"model and metrics written to {args.output}")
    if metrics.get("eval_error"):
        print(f"memrec: error: evaluation failed ({metrics['eval_error']}); the trained model "
              f"is in {args.output}: score it with memrec evaluate --model-dir {args.output} "
              "--data FILE", file=sys.stderr)
        return 1
    return 0


def _cmd_evaluate(args):
    from memrec_tf.app import sources, training
    from memrec_tf.app.errors import UsageError

    options = None
    if args.data_file is not None or args.format not in (None, "synthetic"):
        if args.data_file is None:
            raise UsageError(f"--format {args.format} needs --data FILE")
        options = _data_options(args, eval_file=args.data_file)
        sources.check_file(args.data_file, "--data")  # before loading the model
    metrics = training.evaluate(args.model_dir, options, batch_size=args.batch_size,
                                verbose=0 if args.quiet else 1)
    _print_metrics(metrics)
    print(json.dumps({k: metrics[k] for k in ("auc", "logloss", "embedding_bytes",
                                              "full_embedding_bytes")}))


def _cmd_export(args):
    from memrec_tf import saved_model as export_lib
    from memrec_tf.app import runs
    from memrec_tf.app.errors import UsageError

    runs.check_output_folder(args.output, "--output")
    model = runs.load_model(args.model_dir)
    table_dtype = args.table_dtype or runs.table_dtype(args.model_dir)
    try:
        export_lib.export(model, args.output, mode=args.mode, overwrite=args.overwrite,
                          table_dtype=table_dtype)
    except FileExistsError as e:
        raise UsageError(f"{e} (pass --overwrite to replace it)") from e
    print(f"exported ({args.mode}, {table_dtype} tables) to {args.output}")


def _cmd_plan(args):
    from memrec_tf import data, layers
    from memrec_tf.app import planning, sources
    from memrec_tf.app.errors import UsageError

    cards, value_counts = args.cardinalities, None
    if cards is None:
        if not args.data:
            raise UsageError("give --cardinalities, or --data FILE to count them")
        options = sources.DataOptions(format=args.format, train=args.data, train_flag="--data",
                                      columns=args.columns,
                                      delimiter=args.delimiter,
                                      libfm_fields=args.libfm_fields).resolved()
        counted, _, _ = sources.count_training_values(options)
        # As `memrec train` sizes its layers: the counted values plus one index
        # per feature for values never seen in training.
        cards = data.counted_cardinalities(counted)
        value_counts = layers.frequency_index(counted)[3]
    plan = planning.plan(cards, args.embedding_dim, budget=args.budget_bytes,
                         compression=None if args.budget_bytes else args.compression,
                         num_hashes=args.num_hashes, value_counts=value_counts,
                         table_dtype=args.table_dtype)
    print(json.dumps(plan, indent=2) if args.json else planning.format_plan(plan))


def run(args):
    """Runs the command `args` (parsed by `memrec_cli.build_parser`); the exit status."""
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


def main(argv=None):
    """`memrec ARGS`: see `memrec_cli.main`."""
    return memrec_cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
