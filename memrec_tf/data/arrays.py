"""Small data sets held whole in memory as numpy arrays (`ArrayData`)."""
from __future__ import annotations

import dataclasses
from typing import Dict, Tuple

import numpy as np
import tensorflow as tf

from memrec_tf.features import FeatureSpec
from memrec_tf.data.vocab import Vocabulary


@dataclasses.dataclass
class ArrayData:
    """A small labelled data set, split, as numpy arrays.

    Attributes:
      spec: Feature layout. `cardinalities` and `vocabulary_size` describe
        the "index" arrays (per-column block sizes and V); `id_encoding`
        describes the "categorical" arrays.
      splits: split name -> {"dense": float32 [N, D], "categorical": int64
        [N, C] raw ids, "index": int64 [N, C] global dense indices in [0, V)
        (or -1 / the column's OOV index for unknown values, see
        `vocab.Vocabulary`), "label": float32 [N]}.
      vocabulary: The `Vocabulary` behind "index".
    """

    spec: FeatureSpec
    splits: Dict[str, Dict[str, np.ndarray]]
    vocabulary: Vocabulary

    @classmethod
    def from_raw(cls, spec: FeatureSpec, raw: Dict[str, Tuple[dict, np.ndarray]],
                 *, train_split: str = "train", min_count: int = 1,
                 vocabulary: Vocabulary = None) -> "ArrayData":
        """Builds the arrays, fitting the vocabulary on `train_split`.

        Args:
          spec: Layout of the raw batches.
          raw: split -> `(features, label)` as the readers return them.
          train_split: Split the vocabulary is counted on.
          min_count: See `Vocabulary.fit`.
          vocabulary: Use this vocabulary instead of fitting one.

        Returns:
          The ArrayData.
        """
        if vocabulary is None:
            vocabulary = Vocabulary.fit(raw[train_split][0]["categorical"], min_count)
        splits = {}
        for name, (features, label) in raw.items():
            splits[name] = {
                "dense": np.asarray(features.get("dense", np.zeros([len(label), 0])), np.float32),
                "categorical": np.asarray(features["categorical"], np.int64),
                "index": vocabulary.lookup(features["categorical"]),
                "label": np.asarray(label, np.float32),
            }
        spec = dataclasses.replace(
            spec, cardinalities=tuple(int(c) for c in vocabulary.cardinalities),
            vocabulary_size=vocabulary.size)
        return cls(spec=spec, splits=splits, vocabulary=vocabulary)

    def num_rows(self, split: str) -> int:
        """Rows in `split`."""
        return int(self.splits[split]["label"].shape[0])

    def dataset(self, split: str, batch_size: int = 1024, *, ids: str = "index",
                shuffle: bool = False, seed: int = 0,
                drop_remainder: bool = False) -> tf.data.Dataset:
        """A `tf.data.Dataset` of `(features, label)` batches of one split.

        Args:
          split: Split name.
          batch_size: Rows per batch.
          ids: What goes into features["categorical"]: "index" (dense global
            indices, for a vocabulary-mode embedding) or "raw" (the reader's
            ids, for a hashing embedding).
          shuffle: Shuffle rows, differently each epoch, from `seed`.
          seed: Shuffle seed.
          drop_remainder: Drop the last partial batch.

        Returns:
          The dataset.

        Raises:
          KeyError: Unknown split.
          ValueError: Unknown `ids`.
        """
        if split not in self.splits:
            raise KeyError(f"unknown split {split!r}; have {sorted(self.splits)}")
        if ids not in ("index", "raw"):
            raise ValueError(f"ids must be 'index' or 'raw', got {ids!r}")
        arrays = self.splits[split]
        key = "index" if ids == "index" else "categorical"
        features = self.spec.batch_features({"dense": arrays["dense"], "categorical": arrays[key]})
        ds = tf.data.Dataset.from_tensor_slices((features, arrays["label"]))
        if shuffle:
            ds = ds.shuffle(self.num_rows(split), seed=seed, reshuffle_each_iteration=True)
        return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


def take_rows(batch, rows: np.ndarray):
    """Rows `rows` of a `(features, label)` pair."""
    features, label = batch
    return {k: v[rows] for k, v in features.items()}, label[rows]


def split_rows(batch, fractions: Dict[str, float], seed: int = 0):
    """Splits `(features, label)` at random into named parts.

    Args:
      batch: `(features, label)` arrays.
      fractions: split name -> share of rows, in order; the shares must sum
        to 1 (the last split takes the rounding remainder).
      seed: Seed of the permutation.

    Returns:
      split name -> `(features, label)`.

    Raises:
      ValueError: If a share is negative or they do not sum to 1.
    """
    shares = list(fractions.values())
    if any(s < 0 for s in shares) or abs(sum(shares) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    n = len(batch[1])
    order = np.random.default_rng(seed).permutation(n)
    bounds = np.round(np.cumsum([0.0] + shares) * n).astype(int)
    bounds[-1] = n
    return {name: take_rows(batch, np.sort(order[bounds[i]:bounds[i + 1]]))
            for i, name in enumerate(fractions)}


def carve_split(raw, source: str, target: str, fraction: float, seed: int = 0):
    """Moves a random `fraction` of `raw[source]`'s rows into `raw[target]`."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    parts = split_rows(raw[source], {source: 1.0 - fraction, target: fraction}, seed)
    out = dict(raw)
    out[source] = parts[source]
    out[target] = parts[target]
    return out
