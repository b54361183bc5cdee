"""MemRecEmbedding inside a TensorFlow Recommenders ranking model.

TensorFlow Recommenders needs tf-keras, so this example sets
TF_USE_LEGACY_KERAS=1 before TensorFlow is imported; MemRecEmbedding is
written against `tf.keras` and becomes a tf-keras layer.

    pip install tensorflow-recommenders==0.7.7 tf-keras==2.21.*
    python examples/tfrs_ranking.py --export /tmp/tfrs_ranking

It trains a small ranking model on MovieLens-100K when ../shared/data is
there (user id, item id -> "rating >= 4"), else on synthetic user/item
pairs with a planted preference, then exports it as a SavedModel with the
built-in-ops path (servable by a stock TensorFlow Serving) and checks the
export's predictions.
"""
import argparse
import os
import sys

os.environ["TF_USE_LEGACY_KERAS"] = "1"

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_recommenders as tfrs  # noqa: E402

import memrec_tf  # noqa: E402

keras = tf.keras


def load_pairs(rows, seed):
    """(user ids, item ids, labels): MovieLens-100K if present, else synthetic."""
    try:
        from memrec_tf.data import load_movielens100k

        data = load_movielens100k()
        train = data.splits["train"]
        names = list(data.spec.categorical_names)
        users = train["categorical"][:, names.index("user_id")]
        items = train["categorical"][:, names.index("item_id")]
        return users[:rows], items[:rows], train["label"][:rows].astype("float32"), "MovieLens-100K"
    except (FileNotFoundError, OSError, ValueError):
        rng = np.random.default_rng(seed)
        users = rng.integers(0, 2000, rows)
        items = rng.integers(0, 1000, rows)
        # Users like items of their own parity class: learnable only through
        # the ids' embeddings.
        labels = ((users % 3) == (items % 3)).astype("float32")
        return users, items, labels, "synthetic"


class RankingModel(tfrs.models.Model):
    """Two MEM-REC embeddings, an MLP scorer and a TFRS ranking task."""

    def __init__(self, dim=16):
        super().__init__()
        self.users = memrec_tf.MemRecEmbedding(dim, num_token_rows=512, num_weight_rows=256,
                                               seed=1, name="user_embedding")
        self.items = memrec_tf.MemRecEmbedding(dim, num_token_rows=512, num_weight_rows=256,
                                               seed=2, name="item_embedding")
        self.scorer = keras.Sequential([keras.layers.Dense(32, activation="relu"),
                                        keras.layers.Dense(1, activation="sigmoid")])
        self.task = tfrs.tasks.Ranking(
            loss=keras.losses.BinaryCrossentropy(),
            metrics=[keras.metrics.AUC(name="auc")])

    def call(self, features):
        return self.scorer(tf.concat([self.users(features["user_id"]),
                                      self.items(features["item_id"])], axis=1))

    def compute_loss(self, features, training=False):
        return self.task(labels=features["label"], predictions=self(features))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=40_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--export", default=None, help="SavedModel directory to write")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    assert not hasattr(keras, "__version__") or keras.__version__.startswith("2."), \
        "TensorFlow Recommenders needs tf-keras (TF_USE_LEGACY_KERAS=1)"
    tf.random.set_seed(args.seed)

    users, items, labels, source = load_pairs(args.rows, args.seed)
    features = {"user_id": users.astype("int64"), "item_id": items.astype("int64"),
                "label": labels}
    dataset = tf.data.Dataset.from_tensor_slices(features).batch(512)
    model = RankingModel()
    model.compile(optimizer=keras.optimizers.Adam(0.005))
    history = model.fit(dataset, epochs=args.epochs, verbose=0)
    auc = history.history["auc"]
    print(f"{source}: training AUC by epoch {[round(a, 4) for a in auc]}")

    if args.export:
        @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="user_id"),
                                      tf.TensorSpec([None], tf.int64, name="item_id")])
        def serve(user_id, item_id):
            return {"score": model({"user_id": user_id, "item_id": item_id})}

        # The built-in-ops path, so that a stock TensorFlow Serving serves it.
        for layer in (model.users, model.items):
            layer.implementation = "core"
        tf.saved_model.save(model, args.export, signatures={"serving_default": serve})
        loaded = tf.saved_model.load(args.export)
        probe = {"user_id": tf.constant(users[:64], tf.int64),
                 "item_id": tf.constant(items[:64], tf.int64)}
        served = loaded.signatures["serving_default"](**probe)["score"].numpy()
        direct = model(probe).numpy()
        gap = float(np.abs(served - direct).max())
        print(f"exported to {args.export}; max |served - model| = {gap:.2e}")
        if gap > 1e-5:
            sys.exit("export mismatch")
    return auc


if __name__ == "__main__":
    main()
