"""What a model's inputs hold: one `FeatureSpec` that the readers produce and
the models consume.

Every batch is `(features, label)`: `features["categorical"]` int64 [B, F],
one column per categorical feature, `features["dense"]` float32
[B, num_dense] only when there are dense features, and label float32 [B].

Categorical ids are in one of three id spaces:

  * "hashed": arbitrary int64 ids (raw values, or ids already hashed into a
    range); a feature's cardinality is the range its ids are reduced into.
  * "per_feature": dense indices, feature j's ids in [0, cardinalities[j]).
  * "global": dense indices in [0, vocabulary_size) shared by all features
    (each value of each feature owns one index, as in libFM files).
"""
from __future__ import annotations

import dataclasses
import operator
from typing import Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

ID_SPACES = ("hashed", "per_feature", "global")
ID_ENCODINGS = ("raw", "hex", "hash", "index")


def column_names(prefix: str, count: int) -> Tuple[str, ...]:
    """`(prefix1, prefix2, ...)`, Criteo's column naming."""
    return tuple(f"{prefix}{i + 1}" for i in range(count))


def feature_offsets(cardinalities) -> np.ndarray:
    """Where each feature's indices start when per-feature indices are laid end to end.

    Returns:
      int64 [F]: the exclusive cumulative sum of the cardinalities.
    """
    cards = np.asarray(list(cardinalities), np.int64)
    return np.concatenate([[0], np.cumsum(cards)[:-1]]).astype(np.int64) if cards.size else cards


def id_space(vocabulary_size, dense_ids):
    if vocabulary_size:
        return "global"
    return "per_feature" if dense_ids else "hashed"


def full_rows(cardinalities, vocabulary_size=0):
    """Rows of the full embedding: V for global indices, else the sum of cardinalities."""
    return int(vocabulary_size) if vocabulary_size else int(sum(cardinalities))


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """The features of a data set and of the model that reads it.

    Attributes:
      dense_names: names of the float features, in order.
      categorical_names: names of the categorical (int64 id) features.
      cardinalities: per categorical feature, its number of values (hashed
        ids: the range they are reduced into); None while unknown (a reader
        that has not counted them). A model needs them all.
      vocabulary_size: V > 0 declares global dense indices in [0, V).
      dense_ids: True declares per-feature dense indices in [0, cardinality).
      id_encoding: what the reader's raw ids are: "raw" (integers taken as
        they are), "hex" (Criteo hex strings parsed base 16), "hash"
        (FarmHash of the string, `memrec_tf.data.hash_strings`), "index"
        (dense indices).
      label_name: name of the label column.
      extra_features: names of further [B, F] float32 feature tensors a
        reader yields (e.g. ("weights",) for libFM values).
    """

    dense_names: Tuple[str, ...] = ()
    categorical_names: Tuple[str, ...] = ()
    cardinalities: Optional[Tuple[int, ...]] = None
    vocabulary_size: int = 0
    dense_ids: bool = False
    id_encoding: str = "raw"
    label_name: str = "label"
    extra_features: Tuple[str, ...] = ()

    def __post_init__(self):
        for name in ("dense_names", "categorical_names", "extra_features"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not self.categorical_names:
            raise ValueError("a FeatureSpec needs at least one categorical feature")
        if self.cardinalities is not None:
            try:  # numpy integers are welcome; floats are not
                cards = tuple(operator.index(c) for c in self.cardinalities)
            except TypeError:
                cards = ()
            if len(cards) != len(self.categorical_names) or min(cards, default=0) < 1:
                raise ValueError(
                    f"cardinalities must be {len(self.categorical_names)} positive ints (one "
                    f"per categorical feature), got {list(self.cardinalities)!r}")
            object.__setattr__(self, "cardinalities", cards)
        vocab = self.vocabulary_size
        if not isinstance(vocab, (int, np.integer)) or isinstance(vocab, bool) or vocab < 0:
            raise ValueError(f"vocabulary_size must be an int >= 0, got {vocab!r}")
        object.__setattr__(self, "vocabulary_size", int(vocab))
        if self.vocabulary_size and self.dense_ids:
            raise ValueError("give either vocabulary_size (global dense indices) or "
                             "dense_ids=True (per-feature dense indices), not both")
        if self.id_encoding not in ID_ENCODINGS:
            raise ValueError(f"id_encoding must be one of {ID_ENCODINGS}, "
                             f"got {self.id_encoding!r}")

    @classmethod
    def of(cls, num_dense: int, cardinalities: Sequence[int], vocabulary_size: int = 0,
           dense_ids: bool = False) -> "FeatureSpec":
        """A spec from counts: dense features I1.., categorical features C1..

        Raises:
          ValueError: num_dense is not an int >= 0, or a cardinality is not a
            positive int.
        """
        if not isinstance(num_dense, (int, np.integer)) or num_dense < 0:
            raise ValueError(f"num_dense must be an int >= 0, got {num_dense!r}")
        cards = list(cardinalities)
        if not cards:
            raise ValueError("cardinalities must be a non-empty list of positive ints, got []")
        return cls(dense_names=column_names("I", int(num_dense)),
                   categorical_names=column_names("C", len(cards)), cardinalities=cards,
                   vocabulary_size=vocabulary_size, dense_ids=bool(dense_ids))

    @classmethod
    def from_any(cls, spec) -> "FeatureSpec":
        """A FeatureSpec from a FeatureSpec, `to_dict()`'s dict, or a dict of
        `of()`'s arguments (num_dense, cardinalities, ...)."""
        if isinstance(spec, cls):
            return spec
        if isinstance(spec, dict):
            if "num_dense" in spec:
                return cls.of(**spec)
            return cls(**spec)
        raise ValueError(f"feature_spec must be a FeatureSpec or a dict, got {type(spec).__name__}")

    def to_dict(self) -> dict:
        """Its fields as JSON-friendly values (`from_any` reads them back)."""
        fields = dataclasses.asdict(self)
        for name in ("dense_names", "categorical_names", "extra_features"):
            fields[name] = list(fields[name])
        if self.cardinalities is not None:
            fields["cardinalities"] = list(self.cardinalities)
        return fields

    def with_cardinalities(self, cardinalities) -> "FeatureSpec":
        """This spec with `cardinalities` (e.g. counted from the data)."""
        return dataclasses.replace(self, cardinalities=tuple(cardinalities))

    @property
    def num_dense(self) -> int:
        return len(self.dense_names)

    @property
    def num_categorical(self) -> int:
        return len(self.categorical_names)

    @property
    def id_space(self) -> str:
        return id_space(self.vocabulary_size, self.dense_ids)

    def known_cardinalities(self) -> Tuple[int, ...]:
        """The cardinalities; raises ValueError naming the fix when unknown."""
        if self.cardinalities is None:
            raise ValueError("this FeatureSpec has no cardinalities: count them "
                             "(memrec_tf.data.count_values) or give them")
        return self.cardinalities

    @property
    def full_rows(self) -> int:
        """Rows of the full embedding: V for global indices, else the sum of cardinalities."""
        return full_rows(self.known_cardinalities(), self.vocabulary_size)

    def column_offsets(self) -> np.ndarray:
        """Start of each categorical column's block in one shared index range.

        Returns:
          int64 [num_categorical]: `offsets[c] + id` is a global index when
          column c's ids lie in [0, cardinalities[c]).
        """
        return feature_offsets(self.known_cardinalities())

    def element_spec(self):
        """The `tf.data` element spec of the batches, `(features, label)`."""
        features = {}
        if self.num_dense:
            features["dense"] = tf.TensorSpec([None, self.num_dense], tf.float32)
        features["categorical"] = tf.TensorSpec([None, self.num_categorical], tf.int64)
        for name in self.extra_features:
            features[name] = tf.TensorSpec([None, self.num_categorical], tf.float32)
        return features, tf.TensorSpec([None], tf.float32)

    def batch_features(self, features: dict) -> dict:
        """A reader's features dict with exactly the keys of `element_spec`
        (no empty "dense" block when there are no dense features)."""
        if not self.num_dense and "dense" in features:
            features = {k: v for k, v in features.items() if k != "dense"}
        return features
