"""Ids as the layers take them: any integer or string dtype to int64
(`ids_to_int64`), and ids [B, F] in the id spaces of `memrec_tf.features`
to table indices."""
import tensorflow as tf

from memrec_tf import features
from memrec_tf.ops import core
from memrec_tf.ops.signature import Signature

# hash_ids reduces into this range: wide enough that a later reduction modulo
# any cardinality is as uniform as the hash itself.
_HASH_RANGE = 1 << 62


def same_structure(weights, ids):
    """`weights`, checked to have the shape of `ids` (statically when known)."""
    if weights.shape.rank is not None and ids.shape.rank is not None:
        if not weights.shape.is_compatible_with(ids.shape):
            raise ValueError(f"weights must have the shape of the ids, {ids.shape}; got "
                             f"{weights.shape}")
        if weights.shape.is_fully_defined() and ids.shape.is_fully_defined():
            return weights
    check = tf.debugging.assert_equal(tf.shape(weights), tf.shape(ids),
                                      message="weights must have the shape of the ids")
    with tf.control_dependencies([check]):
        return tf.identity(weights)


def ids_to_int64(ids):
    """int32/int64 ids as int64; strings through TensorFlow's fingerprint op.

    Raises:
      ValueError: ids of any other dtype.
    """
    if ids.dtype == tf.int64:
        return ids
    if ids.dtype in (tf.int32, tf.int16, tf.int8, tf.uint8, tf.uint16, tf.uint32):
        return tf.cast(ids, tf.int64)
    if ids.dtype == tf.string:
        # farmhash64 of the bytes; its 8 output bytes are little-endian.
        flat = tf.reshape(ids, [-1])
        hashed = tf.bitcast(tf.fingerprint(flat), tf.int64)
        return tf.reshape(hashed, tf.shape(ids))
    raise ValueError(f"MemRecEmbedding ids must be integers or strings, got dtype {ids.dtype.name}")


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
