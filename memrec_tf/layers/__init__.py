"""Embeddings of F categorical features, one layer per method, one interface.

Every method's layer maps int64 ids [B, F] (column j: feature j, in the id
space described in `memrec_tf.features`) to float embeddings
[B, F, d], and reports its table bytes against the full tables it replaces
through `embedding_bytes()` (see `categorical.CategoricalEmbedding`).

  method                 layer                      tables
  "memrec"               SharedMemRecEmbedding      one token + one weight table for all F
  "memrec_per_feature"   PerFeatureMemRecEmbedding  a token + weight table per feature
  "full"                 FullEmbedding              keras Embedding per feature (one for global ids)
  "hashing"              HashingEmbedding           one table of R rows, feature-salted hash
  "qr"                   QREmbedding                remainder + quotient tables (Shi et al. 2020)
"""
from memrec_tf import features
from memrec_tf.layers.baselines import FullEmbedding, HashingEmbedding
from memrec_tf.layers.categorical import CategoricalEmbedding
from memrec_tf.layers.memrec_embedding import MemRecEmbedding
from memrec_tf.layers.memrec_features import PerFeatureMemRecEmbedding, SharedMemRecEmbedding
from memrec_tf.layers.qr import QREmbedding
from memrec_tf.layers.vocabulary import (VocabularyEmbedding, VocabularyLookup,
                                         frequency_index, vocabulary_embedding)

__all__ = ["METHODS", "CategoricalEmbedding", "FullEmbedding", "HashingEmbedding",
           "MemRecEmbedding", "PerFeatureMemRecEmbedding", "QREmbedding",
           "SharedMemRecEmbedding", "VocabularyEmbedding", "VocabularyLookup",
           "frequency_index", "make_embedding", "vocabulary_embedding"]

METHODS = ("memrec", "memrec_per_feature", "full", "hashing", "qr")

_LAYERS = {"memrec": SharedMemRecEmbedding, "memrec_per_feature": PerFeatureMemRecEmbedding,
           "full": FullEmbedding, "hashing": HashingEmbedding, "qr": QREmbedding}


def make_embedding(method, feature_spec, output_dim, seed=0, name="embedding", **options):
    """The embedding layer of `method` for the categorical features of a spec.

    Args:
      method: one of METHODS.
      feature_spec: a `FeatureSpec` (or a dict of its fields).
      output_dim: d.
      seed: seeds hashes (and the QR quotient initializer).
      name: the layer's name.
      **options: the method's own arguments (e.g. num_token_rows for memrec,
        num_rows for hashing, remainder_rows for qr); see each layer.

    Returns:
      A `CategoricalEmbedding`.

    Raises:
      ValueError: an unknown method (or a bad option, from the layer).
    """
    if method not in _LAYERS:
        raise ValueError(f"embedding must be one of {METHODS}, got {method!r}")
    spec = features.FeatureSpec.from_any(feature_spec)
    return _LAYERS[method](output_dim=output_dim, cardinalities=list(spec.cardinalities),
                           vocabulary_size=spec.vocabulary_size, dense_ids=spec.dense_ids,
                           seed=seed, name=name, **options)
