"""Does `memrec train` without --epochs train to convergence? Its default
(early stopping on held-out training batches) against a manual sweep of
epochs 1-10 x batch 256 / 1024, on the shipped Frappe and Criteo sample files.

    python benchmarks/sweep_default_training.py [--data-dir ../shared/data]

Each sweep run trains 10 epochs once per batch size and scores the eval file
after every epoch (a run of N epochs is the first N epochs of that run: same
seed, same batches). Prints one table per data set and the gap between the
default and the best of the sweep.
"""
import argparse
import json
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

from memrec_tf.app import sources, training  # noqa: E402
from memrec_tf.data import data_dir  # noqa: E402

keras = tf.keras
DATASETS = {"frappe": ("frappe/frappe.validation.libfm", "frappe/frappe.test.libfm"),
            "criteo_sample": ("criteo_sample/train.tsv", "criteo_sample/test.tsv")}


class _EvalEveryEpoch(keras.callbacks.Callback):
    def __init__(self, dataset):
        super().__init__()
        self.dataset = dataset
        self.auc = []

    def on_epoch_end(self, epoch, logs=None):
        result = self.model.evaluate(self.dataset, verbose=0, return_dict=True)
        self.auc.append(float(result["auc"]))


def _eval_dataset(options, batch_size):
    options = options.resolved()
    reader = sources.make_reader(options, options.eval, batch_size)
    return reader.dataset().map(lambda f, y: (f, tf.reshape(y, [-1, 1])))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    root = data_dir(args.data_dir)
    work = tempfile.mkdtemp(prefix="memrec-sweep-")
    for name, (train, test) in DATASETS.items():
        options = sources.DataOptions(train=str(root / train), eval=str(root / test))
        if not os.path.exists(options.train):
            print(f"{name}: {options.train} absent, skipped")
            continue
        rows = {}
        for batch in (256, 1024):
            callback = _EvalEveryEpoch(_eval_dataset(options, batch))
            training.train(options, os.path.join(work, f"{name}-{batch}"), epochs=args.epochs,
                           batch_size=batch, verbose=0, callbacks=[callback])
            rows[batch] = callback.auc
        default_dir = os.path.join(work, f"{name}-default")
        default = training.train(options, default_dir, verbose=0)
        default_batch = json.load(open(os.path.join(default_dir, "run.json")))["batch_size"]
        best = max((auc, e + 1, b) for b, aucs in rows.items() for e, auc in enumerate(aucs))
        print(f"\n{name}: eval AUC after each epoch (memrec train --train {train} "
              f"--eval {test}, --epochs N --batch-size B)")
        print("| batch | " + " | ".join(f"{e}" for e in range(1, args.epochs + 1)) + " |")
        print("|---|" + "---|" * args.epochs)
        for batch, aucs in rows.items():
            print(f"| {batch} | " + " | ".join(f"{a:.4f}" for a in aucs) + " |")
        print(f"default (no --epochs, --batch-size; it chose {default_batch}): AUC {default['auc']:.4f} after "
              f"{default['epochs']} epochs; best of the sweep {best[0]:.4f} (epochs {best[1]}, "
              f"batch {best[2]}); gap {best[0] - default['auc']:+.4f}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
