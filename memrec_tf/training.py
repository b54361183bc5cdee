"""Training and evaluation of DLRM / DCN models on click logs.

The `memrec` command is a thin layer over this module: `make_source` turns
the data options into tf.data pipelines, `train` builds, fits and saves a
model (under a tf.distribute strategy, resuming from its last checkpoint),
`evaluate` scores a saved one. Everything a run needs to be evaluated again
(data format options, feature spec) is written to `run.json` beside the
model.
"""
import dataclasses
import gc
import json
import os
import time

import numpy as np
import tensorflow as tf

from memrec_tf import data as data_lib
from memrec_tf import models as models_lib
from memrec_tf import planning

keras = tf.keras

FORMATS = ("synthetic", "criteo", "libfm", "csv")
STRATEGIES = ("default", "mirrored", "multi-worker")
# Embeddings of dense indices that the model maps raw ids to by training
# frequency (models.VocabularyEmbedding), by the method that reads them:
# `memrec plan`'s vocabulary configurations (the shared MEM-REC layer,
# without and with head rows), and the collision-free baselines of the
# accuracy benchmarks (one QR pair, one full table of all counted values).
VOCABULARY_METHODS = {"memrec_vocabulary": "memrec", "memrec_vocabulary_head": "memrec",
                      "qr_vocabulary": "qr", "full_vocabulary": "full"}
EMBEDDINGS = models_lib.METHODS + tuple(VOCABULARY_METHODS)
MODEL_FILE = "model.keras"
RUN_FILE = "run.json"
METRICS_FILE = "metrics.json"


class UsageError(ValueError):
    """A user-facing problem with the options or the files (no traceback)."""


@dataclasses.dataclass
class DataOptions:
    """Where the rows come from and how to read them."""

    format: str = "synthetic"
    train: str = None
    eval: str = None
    columns: str = None            # csv: label=...,categorical=...,numeric=...
    delimiter: str = None          # csv: default sniffed from the header
    libfm_fields: int = None       # libfm: pairs per line (one per field)
    on_error: str = "skip"         # malformed lines: skip (counted) or raise
    cardinalities: list = None     # per categorical feature; counted when absent
    synthetic_preset: str = "small"
    synthetic_rows: int = 200_000
    synthetic_eval_rows: int = 50_000
    seed: int = 0


@dataclasses.dataclass
class Source:
    """Data pipelines and the feature spec of the model that reads them."""

    train: object            # callable(batch_size) -> tf.data.Dataset, or None
    eval: object             # callable(batch_size) -> tf.data.Dataset, or None
    num_dense: int
    cardinalities: list
    readers: list            # file readers, for their malformed-line stats


def _as_model_batches(dataset):
    # Readers yield labels [B]; the models predict [B, 1].
    return dataset.map(lambda features, label: (features, tf.reshape(label, [-1, 1])),
                       num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def _check_file(path, what):
    if path is None:
        raise UsageError(f"--{what} FILE is required for this format")
    if not os.path.isfile(path):
        raise UsageError(f"{what} file not found: {path}")
    return path


def _reader(options, path, batch_size):
    fmt = options.format
    if fmt == "criteo":
        return data_lib.CriteoTSVReader([path], batch_size=batch_size, on_error=options.on_error)
    if fmt == "libfm":
        return data_lib.LibFMReader([path], num_fields=options.libfm_fields,
                                    batch_size=batch_size, on_error=options.on_error)
    if fmt == "csv":
        if not options.columns:
            raise UsageError("--format csv needs --columns "
                             "'label=NAME,categorical=A,B,...,numeric=X,Y,...'")
        return data_lib.CSVReader([path], columns=options.columns, delimiter=options.delimiter,
                                  batch_size=batch_size, on_error=options.on_error)
    raise UsageError(f"unknown format {fmt!r}; choose one of {FORMATS}")


def count_values(reader, limit=50_000_000):
    """Training counts of every categorical value, in one streaming pass.

    Returns:
      Per categorical column, `(values, counts)`: int64 arrays of the
      distinct raw ids (ascending) and how often each occurs.

    Raises:
      UsageError: more than `limit` distinct values in all (give
        --cardinalities instead), or no valid rows.
    """
    columns = None  # per column: merged (values, counts) and batches not yet merged
    for features, _ in reader.iter_batches():
        cat = np.asarray(features["categorical"])
        if columns is None:
            columns = [{"merged": (np.zeros(0, np.int64), np.zeros(0, np.int64)),
                        "pending": [], "pending_size": 0} for _ in range(cat.shape[1])]
        total = 0
        for j, column in enumerate(columns):
            values, counts = np.unique(cat[:, j], return_counts=True)
            column["pending"].append((values, counts))
            column["pending_size"] += len(values)
            # Merge once the pending uniques outgrow the merged ones: each
            # value is re-sorted O(log batches) times.
            if column["pending_size"] >= max(len(column["merged"][0]), 1 << 16):
                column["merged"] = _merge_counts([column["merged"]] + column["pending"])
                column["pending"], column["pending_size"] = [], 0
            total += len(column["merged"][0])
        if total > limit:
            raise UsageError(f"more than {limit:,} distinct categorical values: pass "
                             "--cardinalities instead of counting them")
    if columns is None:
        raise UsageError(f"no valid rows in {reader.paths if hasattr(reader, 'paths') else reader}")
    return [_merge_counts([c["merged"]] + c["pending"]) for c in columns]


def _merge_counts(parts):
    """Sums the counts of equal values over (values, counts) pairs."""
    values = np.concatenate([p[0] for p in parts]).astype(np.int64)
    counts = np.concatenate([p[1] for p in parts]).astype(np.int64)
    if not len(values):
        return values, counts
    order = np.argsort(values, kind="stable")
    values, counts = values[order], counts[order]
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    return values[starts], np.add.reduceat(counts, starts)


def count_cardinalities(reader, limit=50_000_000):
    """Distinct ids per categorical column, counted in one streaming pass.

    Raises:
      UsageError: see `count_values`.
    """
    return counted_cardinalities(count_values(reader, limit))


def counted_cardinalities(counted):
    """Distinct values per column of `count_values`' result (a column with none counts 1)."""
    return [max(1, len(values)) for values, _ in counted]


def training_reader(options, batch_size):
    """A reader of the training file of `options` (or its evaluation file)."""
    path = options.train or options.eval
    _check_file(path, "train" if options.train else "eval")
    return _reader(options, path, batch_size)


def make_source(options, batch_size):
    """Pipelines for the training and evaluation data of `options`."""
    if options.format not in FORMATS:
        raise UsageError(f"unknown format {options.format!r}; choose one of {FORMATS}")
    if options.format == "synthetic":
        cards = options.cardinalities or options.synthetic_preset

        def synthetic(rows, stream):
            generator = data_lib.SyntheticCriteo(cards, num_rows=rows, seed=options.seed,
                                                 stream=stream, batch_size=batch_size)
            return generator

        train_gen = synthetic(options.synthetic_rows, 0)
        return Source(
            train=lambda b: _as_model_batches(synthetic(options.synthetic_rows, 0).dataset()),
            eval=lambda b: _as_model_batches(synthetic(options.synthetic_eval_rows, 1).dataset()),
            num_dense=train_gen.num_dense, cardinalities=list(train_gen.cardinalities),
            readers=[])
    readers = []

    def pipeline(path):
        if path is None:
            return None
        _check_file(path, "data")

        def make(b):
            reader = _reader(options, path, b)
            readers.append(reader)
            return _as_model_batches(reader.dataset())
        return make

    train_path = options.train
    if train_path is not None:
        _check_file(train_path, "train")
    if options.eval is not None:
        _check_file(options.eval, "eval")
    probe = training_reader(options, batch_size)
    cards = options.cardinalities
    if cards is None:
        cards = count_cardinalities(probe)
    if len(cards) != probe.spec.num_categorical:
        raise UsageError(f"--cardinalities has {len(cards)} entries but the data has "
                         f"{probe.spec.num_categorical} categorical features")
    return Source(train=pipeline(train_path), eval=pipeline(options.eval),
                  num_dense=probe.spec.num_dense, cardinalities=list(cards), readers=readers)


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


def embedding_options(method, embedding_dim, cardinalities, compression, overrides,
                      vocabulary_size=0, head_rows=False):
    """The embedding layer's options: sized to 1/compression, then overridden.

    With `vocabulary_size`, the layer reads that many global dense indices
    (the cardinalities are not used); `head_rows` then gives a MEM-REC
    layer `planning.head_rows` of its token rows as head rows, as
    `memrec plan` sizes its head-row configuration.
    """
    if method == "full":
        return {}
    sizers = {"memrec": models_lib.memrec_config,
              "memrec_per_feature": models_lib.memrec_per_feature_config,
              "hashing": models_lib.hashing_config, "qr": models_lib.qr_config}
    if method not in sizers:
        raise UsageError(f"unknown embedding {method!r}; choose one of {models_lib.METHODS}")
    kwargs = {}
    if method.startswith("memrec"):
        for key in ("num_hashes", "num_weight_hashes", "weight_mode"):
            if overrides.get(key) is not None:
                kwargs[key] = overrides[key]

    def size(**extra):
        return sizers[method](embedding_dim, cardinalities, vocabulary_size=vocabulary_size,
                              compression=compression, **kwargs, **extra)
    try:
        config = size()
        if head_rows:
            config = size(num_head_rows=planning.head_rows(config.options["num_token_rows"],
                                                           vocabulary_size))
    except ValueError as e:
        raise UsageError(str(e)) from e
    options = dict(config.options)
    options.update({k: v for k, v in overrides.items() if v is not None})
    return options


OPTIMIZERS = {"adam": lambda lr: keras.optimizers.Adam(lr),
              "adagrad": lambda lr: keras.optimizers.Adagrad(lr),
              "sgd": lambda lr: keras.optimizers.SGD(lr)}


def compile_model(model, learning_rate, optimizer="adam"):
    if optimizer not in OPTIMIZERS:
        raise UsageError(f"unknown optimizer {optimizer!r}; choose one of {sorted(OPTIMIZERS)}")
    model.compile(optimizer=OPTIMIZERS[optimizer](learning_rate),
                  loss=keras.losses.BinaryCrossentropy(),
                  metrics=[keras.metrics.AUC(name="auc", num_thresholds=4000),
                           keras.metrics.BinaryCrossentropy(name="logloss")])


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


def _reader_error(readers):
    """The MalformedLineError a reader in "raise" mode stopped on, or None."""
    for reader in readers:
        stats = reader.stats
        if reader.on_error == "raise" and stats.rows_rejected and not stats.complete:
            reject = stats.rejects[-1]
            return data_lib.MalformedLineError(reject.path, reject.line, reject.reason)
    return None


def _reading(readers, run, *args, **kwargs):
    """`run(*args, **kwargs)`, which reads `readers`' datasets (fit, evaluate).

    A reader in "raise" mode stops on a bad line by raising inside its
    Python generator; tf.data hands that on as a `tf.errors.OpError`. This
    raises the reader's own `MalformedLineError` instead. First it drops the
    OpError and collects the garbage: the OpError's traceback holds the
    tf.data iterator, whose prefetch thread may still be calling the
    generator. Left to be freed at interpreter exit, that iterator waits
    forever for the thread, which can no longer take the GIL, and the
    process hangs after the error.
    """
    try:
        return run(*args, **kwargs)
    except tf.errors.OpError:
        error = _reader_error(readers)
        if error is None:
            raise
    gc.collect()
    raise error


def _read_stats(readers):
    rows_read = sum(r.stats.rows_read for r in readers)
    rejected = sum(r.stats.rows_rejected for r in readers)
    first = []
    for r in readers:
        first.extend(f"{x.path}:{x.line}: {x.reason}" for x in r.stats.rejects[:5])
    return {"rows_read": rows_read, "rows_rejected": rejected, "first_rejects": first[:5]}


def train(data_options, output, model_kind="dlrm", embedding="memrec", embedding_dim=16,
          compression=16.0, embedding_overrides=None, epochs=1, batch_size=1024,
          learning_rate=1e-3, optimizer="adam", strategy="default", verbose=1, callbacks=()):
    """Trains a model and writes it, run.json and metrics.json into `output`.

    Interrupted training resumes from `output/backup` (Keras'
    BackupAndRestore) and reaches the weights of an uninterrupted run.
    `callbacks` are added after the checkpointing one. `embedding` is one
    of EMBEDDINGS; the VOCABULARY_METHODS first count the training file's
    values, and the model maps raw ids to indices by training count itself.

    Returns:
      The metrics dict (also written to `output/metrics.json`).
    """
    if embedding in VOCABULARY_METHODS and data_options.format == "synthetic":
        raise UsageError(f"--embedding {embedding} counts the values of a --train file; "
                         "the synthetic format has none")
    os.makedirs(output, exist_ok=True)
    # Same seed, same initial weights: a resumed run and an uninterrupted one
    # start alike.
    keras.utils.set_random_seed(data_options.seed)
    strategy_obj = make_strategy(strategy)
    global_batch = batch_size * strategy_obj.num_replicas_in_sync
    overrides = dict(embedding_overrides or {})
    vocabulary = None
    if embedding in VOCABULARY_METHODS:
        vocabulary = count_values(training_reader(data_options, global_batch))
        # The count gives the cardinalities too: no second pass.
        data_options = dataclasses.replace(data_options,
                                           cardinalities=counted_cardinalities(vocabulary))
    source = make_source(data_options, global_batch)
    if source.train is None:
        raise UsageError("--train FILE is required for this format")
    if vocabulary is not None:
        cardinalities = models_lib.column_cardinalities(vocabulary)
        options = embedding_options(VOCABULARY_METHODS[embedding], embedding_dim, None,
                                    compression, overrides,
                                    vocabulary_size=sum(cardinalities),
                                    head_rows=embedding == "memrec_vocabulary_head")
    else:
        cardinalities = source.cardinalities
        options = embedding_options(embedding, embedding_dim, cardinalities, compression,
                                    overrides)
    spec = {"num_dense": source.num_dense, "cardinalities": cardinalities}
    with strategy_obj.scope():
        model = models_lib.build_model(model_kind, spec,
                                       embedding=VOCABULARY_METHODS.get(embedding, embedding),
                                       embedding_options=options, embedding_dim=embedding_dim,
                                       seed=data_options.seed, vocabulary=vocabulary)
        compile_model(model, learning_rate, optimizer)
    report = models_lib.embedding_report(model)
    throughput = _Throughput(global_batch)
    backup_dir = os.path.join(output, "backup")
    if isinstance(strategy_obj, tf.distribute.MultiWorkerMirroredStrategy):
        start = time.perf_counter()
        throughput.examples = _reading(source.readers, _fit_multi_worker, model, strategy_obj,
                                       source.train(global_batch), global_batch, epochs,
                                       backup_dir)
        throughput.seconds = time.perf_counter() - start
    else:
        _reading(source.readers, model.fit, source.train(global_batch), epochs=epochs,
                 verbose=verbose, shuffle=False,
                 callbacks=[throughput, keras.callbacks.BackupAndRestore(backup_dir), *callbacks])
    metrics = {"auc": None, "logloss": None}
    if source.eval is not None:
        if isinstance(strategy_obj, tf.distribute.MultiWorkerMirroredStrategy):
            metrics.update(_reading(source.readers, _evaluate_locally, model,
                                    source.eval(global_batch)))
        else:
            metrics.update(_reading(source.readers, _evaluate, model, source.eval(global_batch),
                                    verbose))
    metrics.update(embedding_bytes=int(report.bytes), full_embedding_bytes=int(report.full_bytes),
                   compression=float(report.full_bytes / report.bytes),
                   examples_per_second=throughput.examples_per_second,
                   model=model_kind, embedding=embedding, embedding_options=options,
                   num_replicas=strategy_obj.num_replicas_in_sync,
                   vocabulary_mapping_bytes=sum(getattr(layer, "mapping_bytes", 0)
                                                for layer in models_lib.embedding_layers(model)),
                   data=_read_stats(source.readers))
    if _is_chief():
        model.save(os.path.join(output, MODEL_FILE))
        with open(os.path.join(output, RUN_FILE), "w") as f:
            json.dump({"data": dataclasses.asdict(data_options), "model": model_kind,
                       "embedding": embedding, "embedding_dim": embedding_dim,
                       "embedding_options": options, "spec": spec,
                       "batch_size": global_batch}, f, indent=2)
        with open(os.path.join(output, METRICS_FILE), "w") as f:
            json.dump(metrics, f, indent=2)
    return metrics


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


def _is_chief():
    config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    task = config.get("task", {})
    return task.get("type", "chief") == "chief" or (
        task.get("type") == "worker" and task.get("index", 0) == 0)


def _evaluate(model, dataset, verbose):
    results = model.evaluate(dataset, verbose=verbose, return_dict=True)
    return {"auc": float(results["auc"]), "logloss": float(results["logloss"])}


def load_model(model_dir):
    """The model saved by `train` in `model_dir`."""
    path = os.path.join(model_dir, MODEL_FILE)
    if not os.path.isfile(path):
        raise UsageError(f"no trained model in {model_dir} (expected {path})")
    return keras.models.load_model(path)


def evaluate(model_dir, data_options=None, batch_size=None, verbose=1):
    """AUC, log loss and bytes of a saved model on `data_options.eval` data.

    Without data options, the run's own evaluation data is used; without a
    batch size, the run's (the synthetic generator's rows depend on it).
    """
    model = load_model(model_dir)
    with open(os.path.join(model_dir, RUN_FILE)) as f:
        run = json.load(f)
    options = data_options or DataOptions(**run["data"])
    options.cardinalities = run["spec"]["cardinalities"]
    batch_size = batch_size or run.get("batch_size", 1024)
    source = make_source(options, batch_size)
    if source.eval is None:
        raise UsageError("--data FILE is required to evaluate on this format")
    report = models_lib.embedding_report(model)
    metrics = _reading(source.readers, _evaluate, model, source.eval(batch_size), verbose)
    metrics.update(embedding_bytes=int(report.bytes),
                   full_embedding_bytes=int(report.full_bytes),
                   data=_read_stats(source.readers))
    return metrics
