"""Training and evaluation runs of DLRM / DCN models on click logs.

The `memrec` command is a thin layer over this module: `train` reads the
data options (`sources`), builds the model (`building`), fits it under a
tf.distribute strategy, resuming an interrupted run from its last complete
epoch, and writes the model, the run file and the metrics (`runs`);
`evaluate` scores a saved model. Everything a run needs to be evaluated
again (the data options, the feature spec) is in its run file.
"""
import contextlib
import dataclasses
import math
import os
import time

import tensorflow as tf

from memrec_tf import data as data_lib
from memrec_tf import models
from memrec_tf.app import building, runs, sources
from memrec_tf.app.errors import UsageError
from memrec_tf.features import FeatureSpec
from memrec_tf.layers.stored import memrec_layers, stored_tables

keras = tf.keras

STRATEGIES = ("default", "mirrored", "multi-worker")
# Without --epochs: train until the AUC on held-out training batches has not
# improved for PATIENCE epochs (at most MAX_EPOCHS), and keep the best weights.
MAX_EPOCHS = 50
# An --eval file up to this size is read whole before training (checked and
# counted); a larger one is checked on its first batch.
EVAL_COUNT_MAX_BYTES = 256 << 20
PATIENCE = 3
# Without --batch-size: batches of at most DEFAULT_BATCH_SIZE rows, smaller for
# small data so that an epoch still takes MIN_STEPS optimizer steps.
DEFAULT_BATCH_SIZE = 1024
MIN_STEPS = 32


def default_batch_size(rows):
    """The per-replica batch of a run over `rows` training rows (None: unknown).

    DEFAULT_BATCH_SIZE, or for data of fewer than MIN_STEPS such batches the
    power of two (at least 64) nearest rows / MIN_STEPS.
    """
    if not rows or rows >= DEFAULT_BATCH_SIZE * MIN_STEPS:
        return DEFAULT_BATCH_SIZE
    return max(64, 1 << round(math.log2(max(1, rows / MIN_STEPS))))


def make_strategy(name):
    """The tf.distribute strategy of --strategy (workers from TF_CONFIG)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi-worker":
        if "TF_CONFIG" not in os.environ:
            raise UsageError("--strategy multi-worker needs TF_CONFIG naming the cluster and "
                             "this worker's task (see README, 'More than one machine')")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise UsageError(f"unknown strategy {name!r}; choose one of {STRATEGIES}")


class _Throughput(keras.callbacks.Callback):
    """Training examples per second, over the batches of all epochs."""

    def __init__(self, batch_size):
        super().__init__()
        self.batch_size = batch_size
        self.examples = 0
        self.seconds = 0.0

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.seconds += time.perf_counter() - self._start
        self.examples += self.batch_size

    @property
    def examples_per_second(self):
        return self.examples / self.seconds if self.seconds else 0.0


def train(data_options, output, model_kind="dlrm", embedding="memrec", embedding_dim=16,
          compression=16.0, embedding_overrides=None, epochs=None, batch_size=None,
          learning_rate=1e-3, optimizer="adam", strategy="default", hash_seed=0, verbose=1,
          overwrite=False, callbacks=(), table_dtype="float32", fused_update=False):
    """Trains a model and writes it, its run file and its metrics into `output`.

    An interrupted run resumes from its last complete epoch when rerun with
    the same settings (`runs.prepare_output`). The model and the run file
    are written before the evaluation, so an evaluation error leaves them in
    place. `embedding` is one of `building.EMBEDDINGS`; the VOCABULARY_METHODS
    first count the training file's values, and the model maps raw ids to
    indices by training count itself. `callbacks` are added after the backup.
    `batch_size` None is `default_batch_size` of the training rows; `epochs`
    None trains to convergence: it holds out every few training
    batches (`sources.holdout_every`), stops when their AUC has not improved
    for PATIENCE epochs (at most MAX_EPOCHS) and keeps the best weights.
    `fused_update` updates the MEM-REC token tables inside the gradient
    kernel with `optimizer` (see `memrec_tf.optimizers`).

    Returns:
      The metrics dict (also written to `output/metrics.json`).
    """
    data_options = data_options.resolved()
    if data_options.train is None and data_options.format != "synthetic":
        raise UsageError(f"--format {data_options.format} needs --train FILE")
    if embedding in building.VOCABULARY_METHODS and data_options.format == "synthetic":
        raise UsageError(f"--embedding {embedding} counts the values of a --train file; "
                         "the synthetic format has none")
    settings = {"data": dataclasses.asdict(data_options), "model": model_kind,
                "embedding": embedding, "embedding_dim": embedding_dim,
                "compression": compression,
                "embedding_overrides": dict(embedding_overrides or {}), "epochs": epochs,
                "batch_size": batch_size, "learning_rate": learning_rate,
                "optimizer": optimizer, "strategy": strategy, "hash_seed": hash_seed}
    if table_dtype != "float32" and embedding not in building.MEMREC_EMBEDDINGS:
        raise UsageError(f"--table-dtype {table_dtype} applies to --embedding "
                         f"{' / '.join(building.MEMREC_EMBEDDINGS)} (token tables served in "
                         "fewer bits); other embeddings serve float32 tables")
    if table_dtype != "float32":
        settings["table_dtype"] = table_dtype
    embedding_optimizer = None
    if fused_update:
        embedding_optimizer = building.embedding_optimizer(embedding, optimizer, learning_rate)
        settings["fused_update"] = True
    for path, flag in ((data_options.train, data_options.train_flag),
                       (data_options.eval, data_options.eval_flag)):
        if path is not None:
            sources.check_file(path, flag)
    if strategy == "multi-worker" and epochs is None:
        raise UsageError("--strategy multi-worker needs --epochs")
    resuming = runs.prepare_output(output, settings, overwrite) if runs.is_chief() else False
    # Same seed, same initial weights: a resumed run and an uninterrupted one
    # start alike.
    keras.utils.set_random_seed(data_options.seed)
    strategy_obj = make_strategy(strategy)
    replicas = strategy_obj.num_replicas_in_sync
    vocabulary = None
    spec = None
    train_rows = None
    if embedding in building.VOCABULARY_METHODS:
        vocabulary, reader_spec, train_rows = sources.count_training_values(data_options)
        spec = reader_spec.with_cardinalities(data_lib.counted_cardinalities(vocabulary))
    source = sources.make_source(data_options, (batch_size or DEFAULT_BATCH_SIZE) * replicas,
                                 spec=spec, train_rows=train_rows)
    global_batch = (batch_size or default_batch_size(source.train_rows)) * replicas
    eval_rows = _check_eval_file(data_options, source.spec, global_batch)
    with strategy_obj.scope():
        model, options = building.build_model(
            model_kind, source.spec, embedding, embedding_dim, compression,
            dict(embedding_overrides or {}), hash_seed=hash_seed, vocabulary=vocabulary,
            table_dtype=table_dtype, embedding_optimizer=embedding_optimizer)
        building.compile_model(model, learning_rate, optimizer)
    run_record = {"settings": settings, "resumed": resuming, "spec": source.spec.to_dict(),
                  "embedding_options": options, "batch_size": global_batch}
    if runs.is_chief():
        runs.write_json(os.path.join(output, runs.RUN_FILE),
                        dict(run_record, state=runs.TRAINING))
    throughput = _Throughput(global_batch)
    backup_dir = os.path.join(output, runs.BACKUP_DIR)
    multi_worker = isinstance(strategy_obj, tf.distribute.MultiWorkerMirroredStrategy)
    if multi_worker:
        start = time.perf_counter()
        throughput.examples = sources.reading(
            source.readers, _fit_multi_worker, model, strategy_obj, source.train(global_batch),
            global_batch, epochs, backup_dir)
        throughput.seconds = time.perf_counter() - start
    else:
        fit_args = dict(epochs=epochs)
        stopping = []
        dataset = source.train(global_batch)
        if epochs is None:
            every = sources.holdout_every(source.train_rows, global_batch)
            dataset, validation = sources.split_holdout(dataset, every, source.train_rows,
                                                        global_batch)
            fit_args = dict(epochs=MAX_EPOCHS, validation_data=validation)
            stopping = [keras.callbacks.EarlyStopping(monitor="val_auc", mode="max",
                                                      patience=PATIENCE,
                                                      restore_best_weights=True)]
        elif source.train_rows:
            dataset = sources.with_batch_count(dataset, source.train_rows, global_batch)
        if verbose:
            print(f"training ({_describe(data_options.train, data_options.format)}, "
                  f"batches of {global_batch}"
                  + (f", one batch in {every} held out for early stopping)"
                     if epochs is None else f", {epochs} epochs)"), flush=True)
        backup = runs.EpochBackup(backup_dir)
        sources.reading(source.readers, model.fit, dataset, verbose=verbose, shuffle=False,
                        callbacks=[throughput, backup, *stopping, *callbacks], **fit_args)
    train_stats = sources.check_rejects(source.readers, data_options.max_rejected)
    report = models.embedding_report(model, table_dtype)
    metrics = {"auc": None, "logloss": None, "table_dtype": table_dtype,
               "embedding_bytes": int(report.bytes),
               "embedding_table_bytes": int(report.table_bytes),
               "vocabulary_mapping_bytes": int(report.mapping_bytes),
               "full_embedding_bytes": int(report.full_bytes),
               "compression": float(report.ratio),
               "examples_per_second": throughput.examples_per_second,
               "model": model_kind, "embedding": embedding, "embedding_options": options,
               "num_replicas": strategy_obj.num_replicas_in_sync, "data": train_stats,
               "epochs": epochs if multi_worker else backup.epochs_done}
    if runs.is_chief():
        runs.save_model(model, output)
        runs.write_json(os.path.join(output, runs.RUN_FILE),
                        dict(run_record, state=runs.TRAINED))
    if source.eval is not None:
        source.readers.clear()
        try:
            def evaluate_once(served):
                if multi_worker:
                    return sources.reading(source.readers, _evaluate_locally, model,
                                           source.eval(global_batch))
                if verbose:
                    print(f"evaluating ({_describe(data_options.eval, data_options.format)}"
                          + (f", tables as served in {table_dtype})" if served else ")"),
                          flush=True)
                dataset = source.eval(global_batch)
                if eval_rows:
                    dataset = sources.with_batch_count(dataset, eval_rows, global_batch)
                return sources.reading(source.readers, _evaluate, model, dataset, verbose)

            if table_dtype != "float32":
                as_trained = evaluate_once(False)
                metrics.update({f"{k}_float32": v for k, v in as_trained.items()})
                source.readers.clear()
            with served_tables(model, table_dtype):
                metrics.update(evaluate_once(table_dtype != "float32"))
            metrics["eval_data"] = sources.check_rejects(source.readers,
                                                         data_options.max_rejected)
        except (UsageError, ValueError, tf.errors.OpError) as e:
            metrics["eval_error"] = str(e).splitlines()[0] if str(e) else type(e).__name__
    if runs.is_chief():
        runs.write_json(os.path.join(output, runs.METRICS_FILE), metrics)
        runs.remove_backup(output)
    return metrics


def _describe(path, data_format):
    return path if path else f"{data_format} rows"


def _check_eval_file(options, spec, batch_size):
    """Before training: the --eval file exists, parses, and has the training features.

    A file of at most EVAL_COUNT_MAX_BYTES is read whole: its malformed
    lines are checked against --max-rejected now, and its rows counted so
    that the evaluation's progress bar shows a total. Returns those rows, or
    None (a larger file is checked on its first batch only).
    """
    if options.eval is None or options.format == "synthetic":
        return None
    reader = sources.make_reader(options, options.eval, batch_size)
    sources.check_features(spec, reader.spec, options.eval, "the training data")
    whole = os.path.getsize(options.eval) <= EVAL_COUNT_MAX_BYTES
    try:
        batches = reader.iter_batches()
        first = next(iter(batches), None)
        if whole and first is not None:
            for _ in batches:
                pass
    except (data_lib.MalformedLineError, data_lib.CorruptFileError) as e:
        raise UsageError(f"--eval {e}") from e
    if first is None:
        raise UsageError(f"--eval {options.eval} holds no valid rows ("
                         + "; ".join(sources.read_stats([reader])["first_rejects"][:3])
                         + ")")
    if not whole:
        return None
    try:
        sources.check_rejects([reader], options.max_rejected)
    except (UsageError, ValueError) as e:
        raise UsageError(f"--eval {options.eval}: {e}") from e
    return reader.stats.rows_read


def _fit_multi_worker(model, strategy, dataset, global_batch, epochs, backup_dir):
    """Data-parallel training with MultiWorkerMirroredStrategy.

    Keras 3's `fit` cannot yet drive MultiWorkerMirroredStrategy (it reduces
    dict batches and per-replica logs in ways the strategy rejects), so this
    is the custom loop TensorFlow's distributed-training guide describes:
    `strategy.run` of one step per global batch, gradients all-reduced by the
    strategy (sparse ones included), the loss averaged over the global batch.
    Progress is checkpointed every epoch and resumed from `backup_dir`.

    Returns:
      The number of examples trained on (whole global batches).
    """
    loss_fn = keras.losses.BinaryCrossentropy(reduction="none")
    optimizer = model.optimizer
    with strategy.scope():
        optimizer.build(model.trainable_variables)
        epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch)
    manager = tf.train.CheckpointManager(checkpoint, backup_dir, max_to_keep=1)
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint)

    def replica_step(features, labels):
        with tf.GradientTape() as tape:
            predictions = model(features, training=True)
            per_example = loss_fn(labels, predictions)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    @tf.function
    def step(features, labels):
        losses = strategy.run(replica_step, args=(features, labels))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    distributed = strategy.experimental_distribute_dataset(dataset)
    examples = 0
    while int(epoch.numpy()) < epochs:
        for features, labels in distributed:
            step(features, labels)
            examples += global_batch
        epoch.assign_add(1)
        manager.save()
    return examples


def _evaluate_locally(model, dataset):
    """AUC and log loss of every eval batch on this worker (no all-reduce)."""
    auc = keras.metrics.AUC(num_thresholds=4000)
    logloss = keras.metrics.BinaryCrossentropy()
    for features, labels in dataset:
        predictions = model(features, training=False)
        auc.update_state(labels, predictions)
        logloss.update_state(labels, predictions)
    return {"auc": float(auc.result()), "logloss": float(logloss.result())}


@contextlib.contextmanager
def served_tables(model, table_dtype):
    """The model looks up its MEM-REC token tables as served in `table_dtype`
    (`memrec_tf.layers.stored.stored_tables`); Keras' traced evaluation functions
    are dropped on entry and exit so that they read the right tables."""
    with stored_tables(memrec_layers(model), table_dtype):
        model.test_function = model.predict_function = None
        try:
            yield
        finally:
            model.test_function = model.predict_function = None


def _evaluate(model, dataset, verbose):
    results = model.evaluate(dataset, verbose=verbose, return_dict=True)
    return {"auc": float(results["auc"]), "logloss": float(results["logloss"])}


def evaluate(model_dir, data_options=None, batch_size=None, verbose=1):
    """AUC, log loss and bytes of a saved model on `data_options.eval` data.

    Without data options, the run's own evaluation data is used; without a
    batch size, the run's (the synthetic generator's rows depend on it).
    """
    model = runs.load_model(model_dir)
    run = runs.read_json(os.path.join(model_dir, runs.RUN_FILE))
    spec = FeatureSpec.from_any(run["spec"])
    if data_options is None:
        data_options = sources.DataOptions(**run["settings"]["data"])
        data_options = dataclasses.replace(data_options, train=None)
    options = dataclasses.replace(data_options.resolved(),
                                  cardinalities=list(spec.cardinalities))
    if options.format != "synthetic":
        reader = sources.make_reader(options, sources.check_file(options.eval, options.eval_flag), 1)
        sources.check_features(spec, reader.spec, options.eval, f"the model in {model_dir}")
    batch_size = batch_size or run.get("batch_size", 1024)
    source = sources.make_source(options, batch_size, spec=spec)
    if source.eval is None:
        raise UsageError("--data FILE is required to evaluate on this format")
    table_dtype = runs.table_dtype(model_dir)
    report = models.embedding_report(model, table_dtype)
    with served_tables(model, table_dtype):
        metrics = sources.reading(source.readers, _evaluate, model, source.eval(batch_size),
                                  verbose)
    metrics.update(table_dtype=table_dtype, embedding_bytes=int(report.bytes),
                   embedding_table_bytes=int(report.table_bytes),
                   vocabulary_mapping_bytes=int(report.mapping_bytes),
                   full_embedding_bytes=int(report.full_bytes),
                   data=sources.check_rejects(source.readers, options.max_rejected))
    return metrics
