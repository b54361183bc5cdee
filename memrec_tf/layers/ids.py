"""Ids [B, F] in the id spaces of `memrec_tf.features` -> table indices."""
import tensorflow as tf

from memrec_tf import features
from memrec_tf.ops import core
from memrec_tf.ops.signature import Signature

# hash_ids reduces into this range: wide enough that a later reduction modulo
# any cardinality is as uniform as the hash itself.
_HASH_RANGE = 1 << 62



def hash_ids(ids, seed=0):
    """Non-negative hashes of ids [B, F], column j salted with j.

    Uses MEM-REC's own 64-bit hash (memrec_tf.ops.core), so equal raw ids in two
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
    offsets = tf.constant(features.feature_offsets(cardinalities), tf.int64)
    return feature_index(ids, cardinalities, dense_ids, seed) + offsets
