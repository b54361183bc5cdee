"""What a model's inputs hold, and the index spaces its embeddings read.

Categorical ids arrive as one int64 tensor [B, F], one column per feature, in
one of three id spaces:

  * "hashed": arbitrary int64 ids (raw values, or ids already hashed into a
    range); a feature's cardinality is the range its ids are reduced into.
  * "per_feature": dense indices, feature j's ids in [0, cardinalities[j]).
  * "global": dense indices in [0, vocabulary_size) shared by all features
    (each value of each feature owns one index, as in libFM files).
"""
import dataclasses
import operator

import tensorflow as tf

from memrec_tf import core
from memrec_tf.signature import Signature

keras = tf.keras

ID_SPACES = ("hashed", "per_feature", "global")

# hash_ids reduces into this range: wide enough that a later reduction modulo
# any cardinality is as uniform as the hash itself.
_HASH_RANGE = 1 << 62


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """The inputs of a model.

    Attributes:
      num_dense: number of float features (0: the model has no "dense" input).
      cardinalities: per categorical feature, its number of values (for
        hashed ids: the range they are reduced into).
      vocabulary_size: V > 0 declares global dense indices in [0, V).
      dense_ids: True declares per-feature dense indices in [0, cardinality).
    """

    num_dense: int
    cardinalities: tuple
    vocabulary_size: int = 0
    dense_ids: bool = False

    def __post_init__(self):
        try:  # numpy integers are welcome; floats are not
            cards = tuple(operator.index(c) for c in self.cardinalities)
        except TypeError:
            cards = ()
        if not cards or min(cards) < 1:
            raise ValueError("cardinalities must be a non-empty list of positive ints, got "
                             f"{list(self.cardinalities)!r}")
        object.__setattr__(self, "cardinalities", cards)
        if not isinstance(self.num_dense, int) or self.num_dense < 0:
            raise ValueError(f"num_dense must be an int >= 0, got {self.num_dense!r}")
        if not isinstance(self.vocabulary_size, int) or self.vocabulary_size < 0:
            raise ValueError(f"vocabulary_size must be an int >= 0, got {self.vocabulary_size!r}")
        if self.vocabulary_size and self.dense_ids:
            raise ValueError("give either vocabulary_size (global dense indices) or "
                             "dense_ids=True (per-feature dense indices), not both")

    @classmethod
    def from_any(cls, spec):
        """A FeatureSpec from a FeatureSpec or a dict of its fields."""
        if isinstance(spec, cls):
            return spec
        if isinstance(spec, dict):
            return cls(**spec)
        raise ValueError(f"feature_spec must be a FeatureSpec or a dict, got {type(spec).__name__}")

    @property
    def num_categorical(self):
        return len(self.cardinalities)

    @property
    def id_space(self):
        return id_space(self.vocabulary_size, self.dense_ids)

    @property
    def full_rows(self):
        """Rows of the full embedding: V for global indices, else the sum of cardinalities."""
        return full_rows(self.cardinalities, self.vocabulary_size)


def id_space(vocabulary_size, dense_ids):
    if vocabulary_size:
        return "global"
    return "per_feature" if dense_ids else "hashed"


def full_rows(cardinalities, vocabulary_size=0):
    return vocabulary_size if vocabulary_size else sum(cardinalities)


def feature_offsets(cardinalities):
    """Where each feature's indices start when per-feature indices are laid end to end."""
    offsets, total = [], 0
    for c in cardinalities:
        offsets.append(total)
        total += c
    return offsets


def hash_ids(ids, seed=0):
    """Non-negative hashes of ids [B, F], column j salted with j.

    Uses MEM-REC's own 64-bit hash (memrec_tf.core), so equal raw ids in two
    features hash apart.

    Returns:
      int64 [B, F] in [0, 2**62).
    """
    ids = tf.convert_to_tensor(ids)
    if ids.dtype != tf.int64:
        ids = tf.cast(ids, tf.int64)
    num_features = ids.shape[-1]
    if num_features is None:
        raise ValueError(f"hash_ids needs a static number of features, got shape {ids.shape}")
    signature = Signature(num_hashes=1, num_weight_hashes=0, seed=seed,
                          num_salts=int(num_features))
    rows, _ = core.hash_rows(tf.reshape(ids, [-1]), signature, _HASH_RANGE, 1)
    return tf.reshape(rows, tf.shape(ids))


def feature_index(ids, cardinalities, dense_ids, seed=0):
    """Per-feature indices [B, F]: column j in [0, cardinalities[j]).

    Hashed ids are hashed (feature-salted) and reduced modulo the cardinality;
    per-feature dense ids are taken as they are.
    """
    if dense_ids:
        return tf.cast(ids, tf.int64)
    cards = tf.constant(list(cardinalities), tf.int64)
    return tf.math.floormod(hash_ids(ids, seed), cards)


def global_index(ids, cardinalities, vocabulary_size, dense_ids, seed=0):
    """Indices [B, F] in one space of full_rows(...) values shared by all features.

    Global dense ids are taken as they are; per-feature indices (dense, or
    hashed into their cardinality) are shifted by the feature's offset.
    """
    if vocabulary_size:
        return tf.cast(ids, tf.int64)
    offsets = tf.constant(feature_offsets(cardinalities), tf.int64)
    return feature_index(ids, cardinalities, dense_ids, seed) + offsets


def make_inputs(spec):
    """The named Keras Inputs of a model, by name.

    "dense": float32 [B, num_dense] (left out when spec.num_dense is 0);
    "categorical": int64 [B, F].
    """
    inputs = {}
    if spec.num_dense:
        inputs["dense"] = keras.Input(shape=(spec.num_dense,), dtype="float32", name="dense")
    inputs["categorical"] = keras.Input(
        shape=(spec.num_categorical,), dtype="int64", name="categorical")
    return inputs
