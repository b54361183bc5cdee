"""Helpers shared by the accuracy and scale benchmarks.

* `auc`: exact ROC AUC (rank statistic, ties averaged).
* `method_config`: every embedding variant of the benchmarks sized to a
  compression factor of the full tables.
* `train_eval`: one seeded DLRM training run with early stopping on a
  validation split, returning validation / test AUC and the epochs used.
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
METHODS = ("full", "hashing", "qr", "memrec-paper-k2", "memrec-paper-k3", "memrec-vocab",
           "memrec-vocab-noW", "memrec-vocab-perhash", "memrec-vocab-head")
MEMREC_VARIANTS = ("memrec-paper-k2", "memrec-paper-k3", "memrec-vocab", "memrec-vocab-noW",
                   "memrec-vocab-perhash", "memrec-vocab-head")
WEIGHT_FRACTION = 0.125


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
                  head_fraction=None):
    """(embedding, options, spec_kind, bytes) of one benchmark method.

    spec_kind is "global" (FeatureSpec with vocabulary_size=V: the ids are
    dense global indices) or "hashed" (no vocabulary_size: the index ids are
    hashed at random, feature-salted, as in the MEM-REC paper).
    head_fraction: memrec-vocab-head's share of the token rows that are head
    rows (None: the share `memrec plan` recommends).
    """
    from memrec_tf import sizing

    V = vocabulary_size
    if method == "full":
        c = sizing.full_config(dim, vocabulary_size=V)
        return "full", dict(c.options), "global", c.bytes
    if method == "hashing":
        c = sizing.hashing_config(dim, vocabulary_size=V, compression=compression)
        return "hashing", dict(c.options), "global", c.bytes
    if method == "qr":
        c = sizing.qr_config(dim, vocabulary_size=V, compression=compression, combine="product")
        return "qr", dict(c.options), "global", c.bytes
    if method.startswith("memrec-paper-k"):
        k = int(method.rsplit("k", 1)[1])
        c = sizing.memrec_config(dim, vocabulary_size=V, compression=compression,
                                 weight_fraction=WEIGHT_FRACTION, num_hashes=k)
        return "memrec", dict(c.options), "hashed", c.bytes
    args = dict(weight_fraction=WEIGHT_FRACTION, num_hashes=2)
    if method == "memrec-vocab-noW":
        args.update(weight_fraction=0.0, num_weight_hashes=0)
    elif method == "memrec-vocab-perhash":
        args.update(weight_mode="per_hash")
    elif method not in ("memrec-vocab", "memrec-vocab-head"):
        raise ValueError(f"unknown method {method!r}; have {METHODS}")
    c = sizing.memrec_config(dim, vocabulary_size=V, compression=compression, **args)
    if method == "memrec-vocab-head":
        if head_fraction is None:  # the share `memrec plan` recommends
            from memrec_tf.sizing import HEAD_FRACTION as head_fraction
        head = int(head_fraction * c.options["num_token_rows"])
        if head > 0:
            c = sizing.memrec_config(dim, vocabulary_size=V, compression=compression,
                                     num_head_rows=head, **args)
    return "memrec", dict(c.options), "global", c.bytes


def make_dataset(features, labels, batch_size, shuffle_seed=None):
    import tensorflow as tf
    ds = tf.data.Dataset.from_tensor_slices((features, labels))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(labels), seed=shuffle_seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(2)


def train_eval(data, method, compression, seed, *, dim=16, top_mlp=(64, 32), batch_size=1024,
               lr=1e-3, max_epochs=10, patience=1, eval_batch=16384,
               head_fraction=None):
    """One run: build, train with early stopping on data["dev"], test the best epoch.

    Args:
      data: {"num_dense", "cardinalities", "vocabulary_size", "splits":
        {split: {"dense", "index", "label"}}} with frequency-ranked indices.
      method, compression, head_fraction: see `method_config` (compression 1
        for full).
      seed: model init, hashes and shuffling.

    Returns:
      dict(bytes, full_bytes, val_auc, test_auc, epochs, best_epoch, seconds, options).
    """
    import tensorflow as tf
    from memrec_tf import models
    from memrec_tf.features import FeatureSpec

    keras = tf.keras
    start = time.perf_counter()
    keras.utils.set_random_seed(seed)
    V = data["vocabulary_size"]
    embedding, options, kind, nbytes = method_config(method, V, data["cardinalities"],
                                                     compression, dim, head_fraction)
    spec = FeatureSpec.of(num_dense=data["num_dense"],
                          cardinalities=tuple(data["cardinalities"]),
                          vocabulary_size=V if kind == "global" else 0)
    model = models.build_model("dlrm", spec, embedding=embedding, embedding_options=options,
                               embedding_dim=dim, seed=seed, top_mlp=top_mlp)
    report = models.embedding_report(model)
    assert report.bytes == nbytes, (method, report.bytes, nbytes)
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
    test = auc(data["splits"]["test"]["label"], predict(test_x))
    keras.backend.clear_session()
    return dict(bytes=int(report.bytes), full_bytes=int(report.full_bytes), val_auc=best_auc,
                test_auc=test, epochs=epochs, best_epoch=best_epoch,
                seconds=round(time.perf_counter() - start, 2),
                options={k: v for k, v in options.items()})


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
