"""Helpers shared by the accuracy and scale benchmarks.

* `auc`: exact ROC AUC (rank statistic, ties averaged).
* `method_config`: every embedding variant of the benchmarks sized to a
  compression factor of the float32 full tables, in served bytes (tables
  in their serving format, and any id -> index mapping when counted).
* `train_eval`: one seeded DLRM training run with early stopping on a
  validation split, returning validation / test AUC and the epochs used,
  of the model as served (tables rounded to their serving format) and as
  trained in float32.
* `interleaved_times`: wall times of several variants, timed side by side.
"""
import json
import os
import platform
import statistics
import time

import numpy as np

# Methods of the accuracy grid, in table order. "memrec-paper" is not a run
# of its own: it is the better k (by validation AUC) of the two paper runs.
# A suffix "-bf16" or "-int8" serves the method's (token) tables in that
# format (memrec_tf.ops.quantize): trained in float32 at the rows that fit
# the budget as served, evaluated with its tables rounded.
METHODS = ("full", "full-int8", "hashing", "qr", "memrec-paper-k2", "memrec-paper-k3",
           "memrec-paper-k2-bf16", "memrec-paper-k3-bf16", "memrec-paper-k2-int8",
           "memrec-paper-k3-int8", "memrec-vocab", "memrec-vocab-noW", "memrec-vocab-perhash",
           "memrec-vocab-head", "hashing-int8", "memrec-paper-k2-head", "memrec-paper-k2-head-int8")
# One cell each (budget 1): the full tables, whatever they take.
FULL_METHODS = ("full", "full-int8")
MEMREC_VARIANTS = ("memrec-paper-k2", "memrec-paper-k3", "memrec-paper-k2-bf16",
                   "memrec-paper-k3-bf16", "memrec-paper-k2-int8", "memrec-paper-k3-int8",
                   "memrec-vocab", "memrec-vocab-noW", "memrec-vocab-perhash",
                   "memrec-vocab-head", "memrec-paper-k2-head", "memrec-paper-k2-head-int8")
# Methods that read the dense frequency index: with raw ids they need the
# id -> index mapping, which the raw-ids regime counts in their bytes.
DENSE_INDEX_METHODS = ("full", "qr", "memrec-vocab", "memrec-vocab-noW", "memrec-vocab-perhash",
                       "memrec-vocab-head")
DTYPE_SUFFIXES = {"-bf16": "bfloat16", "-int8": "int8"}
WEIGHT_FRACTION = 0.125
# Bytes of one head id in the sorted int64 table that finds head values.
HEAD_ID_BYTES = 8


def split_method(method):
    """(base method, serving table dtype) of a method name such as memrec-paper-k2-int8."""
    for suffix, dtype in DTYPE_SUFFIXES.items():
        if method.endswith(suffix):
            return method[:-len(suffix)], dtype
    return method, "float32"


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_info():
    import tensorflow as tf
    return {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "tensorflow": tf.__version__, "load_avg_at_start": list(os.getloadavg()),
            "time": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def auc(labels, scores):
    """Exact ROC AUC: the Mann-Whitney statistic with tied scores averaged."""
    from scipy.stats import rankdata
    labels = np.asarray(labels).reshape(-1) > 0.5
    scores = np.asarray(scores, np.float64).reshape(-1)
    pos = int(labels.sum())
    neg = labels.size - pos
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def method_config(method, vocabulary_size, cardinalities, compression, dim=16,
                  head_fraction=None, mapping_bytes=0):
    """One benchmark method sized to full / compression in served bytes.

    spec_kind is "global" (FeatureSpec with vocabulary_size=V: the ids are
    dense global indices) or "hashed" (no vocabulary_size: the index ids are
    hashed at random, feature-salted, as in the MEM-REC paper).
    head_fraction: memrec-vocab-head's share of the token rows that are head
    rows (None: the share `memrec plan` recommends).
    mapping_bytes: bytes of the id -> index mapping that a method reading
    the dense index needs (DENSE_INDEX_METHODS); counted in its bytes and
    taken out of the budget before its tables are sized (0: not counted).

    Returns:
      dict(embedding, options, kind, table_dtype, table_bytes, mapping_bytes,
      bytes).

    Raises:
      ValueError: the method cannot fit the budget (its mapping alone may not).
    """
    from memrec_tf import sizing

    V = vocabulary_size
    base, table_dtype = split_method(method)
    mapping = int(mapping_bytes) if base in DENSE_INDEX_METHODS else 0
    full = sizing.full_table_bytes(None, V, dim)
    if base == "full":
        c = sizing.full_config(dim, vocabulary_size=V, table_dtype=table_dtype)
        embedding, kind = "full", "global"
    else:
        budget = sizing.budget_bytes(full, compression=compression) - mapping
        if budget < 1:
            raise ValueError(f"the id -> index mapping ({mapping} bytes) alone exceeds the "
                             f"budget of {budget + mapping} bytes")
        sized = dict(vocabulary_size=V, budget=budget, table_dtype=table_dtype)
        if base == "hashing":
            c = sizing.hashing_config(dim, **sized)
            embedding, kind = "hashing", "global"
        elif base == "qr":
            c = sizing.qr_config(dim, combine="product", **sized)
            embedding, kind = "qr", "global"
        elif base.startswith("memrec-paper-k") and base.endswith("-head"):
            return head_rows_config(method, V, dim, budget, head_fraction)
        elif base.startswith("memrec-paper-k"):
            k = int(base.rsplit("k", 1)[1])
            c = sizing.memrec_config(dim, weight_fraction=WEIGHT_FRACTION, num_hashes=k,
                                     **sized)
            embedding, kind = "memrec", "hashed"
        else:
            args = dict(weight_fraction=WEIGHT_FRACTION, num_hashes=2)
            if base == "memrec-vocab-noW":
                args.update(weight_fraction=0.0, num_weight_hashes=0)
            elif base == "memrec-vocab-perhash":
                args.update(weight_mode="per_hash")
            elif base not in ("memrec-vocab", "memrec-vocab-head"):
                raise KeyError(f"unknown method {method!r}; have {METHODS}")
            c = sizing.memrec_config(dim, **sized, **args)
            if base == "memrec-vocab-head":
                if head_fraction is None:  # the share `memrec plan` recommends
                    from memrec_tf.sizing import HEAD_FRACTION as head_fraction
                head = int(head_fraction * c.options["num_token_rows"])
                if head > 0:
                    c = sizing.memrec_config(dim, num_head_rows=head, **sized, **args)
            embedding, kind = "memrec", "global"
    return dict(embedding=embedding, options=dict(c.options), kind=kind, table_dtype=table_dtype,
                table_bytes=c.bytes, mapping_bytes=mapping, bytes=c.bytes + mapping)


def head_rows_config(method, vocabulary_size, dim, budget, head_fraction=None):
    """memrec-paper-k{k}-head: the paper's MEM-REC on hashed ids, except the H
    most frequent values, which own a row each (an experiment, `HeadRowsMemRec`).

    Serving finds a head value in a sorted int64 table of the H head ids, so
    each head value costs its row (as served) and 8 bytes, counted in
    `mapping_bytes`. head_fraction (default sizing.HEAD_FRACTION) is the
    share of the budget spent on head values, rows and ids; the paper's
    MEM-REC is sized to the rest.
    """
    from memrec_tf import sizing
    from memrec_tf.ops import quantize
    base, table_dtype = split_method(method)
    k = int(base[len("memrec-paper-k"):-len("-head")])
    if head_fraction is None:
        head_fraction = sizing.HEAD_FRACTION
    per_head = quantize.row_bytes(dim, table_dtype) + HEAD_ID_BYTES
    heads = min(int(head_fraction * budget) // per_head, vocabulary_size)
    if heads < 1:
        raise ValueError(f"a budget of {budget} bytes holds no head row of {per_head} bytes")
    rest = budget - heads * per_head
    c = sizing.memrec_config(dim, vocabulary_size=vocabulary_size, budget=rest,
                             weight_fraction=WEIGHT_FRACTION, num_hashes=k,
                             table_dtype=table_dtype)
    head_table = sizing.stored_table_bytes([(heads, dim)], table_dtype)
    return dict(embedding="memrec-head", options=dict(c.options, num_head_ids=heads),
                kind="hashed", table_dtype=table_dtype, table_bytes=c.bytes + head_table,
                mapping_bytes=heads * HEAD_ID_BYTES,
                bytes=c.bytes + head_table + heads * HEAD_ID_BYTES)


def head_rows_layer(dim, cardinalities, seed, options):
    """The `HeadRowsMemRec` layer of a head_rows_config's options."""
    import tensorflow as tf
    from memrec_tf.layers.categorical import CategoricalEmbedding
    from memrec_tf.layers.memrec_features import SharedMemRecEmbedding
    from memrec_tf.sizing import tables

    class HeadRowsMemRec(CategoricalEmbedding):
        """Ids below num_head_ids (the most frequent values of a frequency-
        ranked index) read a row of their own; every other id reads the
        paper's MEM-REC on its hashed id. `mapping_bytes` counts the sorted
        int64 table of head ids that serving raw ids needs."""

        def __init__(self, output_dim, cardinalities, num_head_ids, seed=0, **memrec_options):
            super().__init__(output_dim, cardinalities, seed=seed)
            self.num_head_ids = int(num_head_ids)
            self.memrec = SharedMemRecEmbedding(output_dim, cardinalities, seed=seed,
                                                name="memrec", **memrec_options)

        def build(self, input_shape):
            self.head_table = self.add_weight(name="head_table",
                                              shape=(self.num_head_ids, self.output_dim),
                                              initializer="uniform", trainable=True)
            self.memrec.build(input_shape)
            self.built = True

        def table_shapes(self):
            return [(self.num_head_ids, self.output_dim)] + self.memrec.table_shapes()

        @property
        def mapping_bytes(self):
            return self.num_head_ids * HEAD_ID_BYTES

        def stored_bytes(self, table_dtype):
            return (tables.stored_table_bytes(self.table_shapes()[:1], table_dtype)
                    + self.memrec.stored_bytes(table_dtype))

        def call(self, ids):
            ids = tf.cast(ids, tf.int64)
            is_head = ids < self.num_head_ids
            head = tf.gather(self.head_table, tf.where(is_head, ids, tf.zeros_like(ids)))
            return tf.where(is_head[..., None], head, self.memrec(ids))

    options = dict(options)
    return HeadRowsMemRec(dim, cardinalities, options.pop("num_head_ids"), seed=seed, **options)


def served_variables(model, with_weight_table=False):
    """The embedding tables a serving format rounds: every table of the
    embedding layers but MEM-REC's weight table (served in float32) unless
    `with_weight_table`."""
    from memrec_tf import models
    return [v for layer in models.embedding_layers(model) for v in layer.trainable_variables
            if with_weight_table or v.name.split("/")[-1].split(":")[0] != "weight_table"]


def make_dataset(features, labels, batch_size, shuffle_seed=None):
    import tensorflow as tf
    ds = tf.data.Dataset.from_tensor_slices((features, labels))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(labels), seed=shuffle_seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(2)


def train_eval(data, method, compression, seed, *, dim=16, top_mlp=(64, 32), batch_size=1024,
               lr=1e-3, max_epochs=10, patience=1, eval_batch=16384,
               head_fraction=None, mapping_bytes=0):
    """One run: build, train with early stopping on data["dev"], test the best epoch.

    Training keeps float32 tables. The best epoch is then evaluated as
    trained (`*_float32`) and as served: its tables replaced by
    `quantize.round_trip(table, table_dtype)`, what a lookup reads from
    the stored format. `rounded` holds the AUCs of the same model with its
    tables rounded to every format (int8+W: the weight table too).

    Args:
      data: {"num_dense", "cardinalities", "vocabulary_size", "splits":
        {split: {"dense", "index", "label"}}} with frequency-ranked indices.
      method, compression, head_fraction, mapping_bytes: see `method_config`
        (compression 1 for full).
      seed: model init, hashes and shuffling.

    Returns:
      dict(bytes, table_bytes, mapping_bytes, table_dtype, full_bytes,
      val_auc, test_auc (as served), val_auc_float32, test_auc_float32,
      rounded, epochs, best_epoch, seconds, options).
    """
    import tensorflow as tf
    from memrec_tf import models
    from memrec_tf.features import FeatureSpec
    from memrec_tf.ops import quantize

    keras = tf.keras
    start = time.perf_counter()
    keras.utils.set_random_seed(seed)
    V = data["vocabulary_size"]
    config = method_config(method, V, data["cardinalities"], compression, dim, head_fraction,
                           mapping_bytes)
    spec = FeatureSpec.of(num_dense=data["num_dense"],
                          cardinalities=tuple(data["cardinalities"]),
                          vocabulary_size=V if config["kind"] == "global" else 0)
    if config["embedding"] == "memrec-head":
        model = models.build_dlrm(spec, head_rows_layer(dim, spec.cardinalities, seed,
                                                        config["options"]), top_mlp=top_mlp)
    else:
        model = models.build_model("dlrm", spec, embedding=config["embedding"],
                                   embedding_options=config["options"], embedding_dim=dim,
                                   seed=seed, top_mlp=top_mlp)
    # The layers' own count of their tables as served must be what was sized.
    report = models.embedding_report(model, config["table_dtype"])
    assert report.table_bytes == config["table_bytes"], (method, report, config)
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="binary_crossentropy",
                  jit_compile=False)

    def feats(split):
        s = data["splits"][split]
        out = {"categorical": s["index"]}
        if data["num_dense"]:
            out["dense"] = s["dense"]
        return out

    train = make_dataset(feats("train"), data["splits"]["train"]["label"], batch_size, seed)
    dev_x, test_x = feats("dev"), feats("test")

    def predict(x):
        # One direct call per chunk: cheaper than model.predict's per-call setup.
        n = len(next(iter(x.values())))
        parts = [model({k: v[i:i + eval_batch] for k, v in x.items()}, training=False)
                 for i in range(0, n, eval_batch)]
        return np.concatenate([np.asarray(p).reshape(-1) for p in parts])

    state = dict(best=-1.0, weights=None, epoch=0, epochs=0, bad=0)

    class EarlyStop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            val = auc(data["splits"]["dev"]["label"], predict(dev_x))
            state["epochs"] = epoch + 1
            if val > state["best"]:
                state.update(best=val, weights=model.get_weights(), epoch=epoch + 1, bad=0)
            else:
                state["bad"] += 1
                if state["bad"] >= patience:
                    model.stop_training = True

    model.fit(train, epochs=max_epochs, verbose=0, callbacks=[EarlyStop()])
    best_auc, best_weights = state["best"], state["weights"]
    best_epoch, epochs = state["epoch"], state["epochs"]
    model.set_weights(best_weights)

    def evaluate():
        return (auc(data["splits"]["dev"]["label"], predict(dev_x)),
                auc(data["splits"]["test"]["label"], predict(test_x)))

    test = auc(data["splits"]["test"]["label"], predict(test_x))
    rounded = {}
    for name, dtype, with_w in (("bfloat16", "bfloat16", False), ("int8", "int8", False),
                                ("int8+W", "int8", True)):
        variables = served_variables(model, with_w)
        trained = [np.array(v.numpy()) for v in variables]
        for v, t in zip(variables, trained):
            v.assign(quantize.round_trip_numpy(t, dtype))
        val_r, test_r = evaluate()
        rounded[name] = dict(val=val_r, test=test_r)
        for v, t in zip(variables, trained):
            v.assign(t)
    keras.backend.clear_session()
    dtype = config["table_dtype"]
    served_val, served_test = ((best_auc, test) if dtype == "float32"
                               else (rounded[dtype]["val"], rounded[dtype]["test"]))
    return dict(bytes=int(config["bytes"]), table_bytes=int(config["table_bytes"]),
                mapping_bytes=int(config["mapping_bytes"]), table_dtype=dtype,
                full_bytes=int(report.full_bytes), val_auc=served_val, test_auc=served_test,
                val_auc_float32=best_auc, test_auc_float32=test, rounded=rounded,
                epochs=epochs, best_epoch=best_epoch,
                seconds=round(time.perf_counter() - start, 2),
                options={k: v for k, v in config["options"].items()})


def interleaved_times(cases, rounds, repeats, warmup=1):
    """Times callables side by side: every round runs each `repeats` times.

    Args:
      cases: {name: callable}, each called after `warmup` untimed calls.
      rounds: interleaved rounds (load that comes and goes hits every case).
      repeats: calls per case and round.

    Returns:
      {name: [the median ms of each round's calls]}.
    """
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    samples = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                fn()
                times.append((time.perf_counter() - start) * 1e3)
            samples[name].append(statistics.median(times))
    return samples


def write_json(path, obj):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=False)
    os.replace(tmp, path)
