"""Recommendation models (DLRM, DCN-v2) over interchangeable embeddings.

    from memrec_tf import models
    spec = models.FeatureSpec(num_dense=13, cardinalities=[1000] * 26)
    config = models.memrec_config(16, spec.cardinalities, compression=16)
    model = models.build_model("dlrm", spec, embedding="memrec",
                               embedding_options=config.options)
    model.compile("adam", "binary_crossentropy")
    models.embedding_report(model)  # EmbeddingBytes(bytes=..., full_bytes=...)

Inputs are {"dense": float32 [B, num_dense], "categorical": int64 [B, F]}
("dense" only when num_dense > 0); the output is a probability [B, 1].
"""
from memrec_tf.models.budget import (BudgetConfig, budget_configs, full_config, hashing_config,
                                     memrec_config, memrec_per_feature_config, qr_config)
from memrec_tf.models.dcn import CrossLayer, build_dcn
from memrec_tf.models.dlrm import DotInteraction, build_dlrm
from memrec_tf.models.embeddings import (METHODS, CategoricalEmbedding, EmbeddingBytes,
                                         FullEmbedding, HashingEmbedding,
                                         PerFeatureMemRecEmbedding, QREmbedding,
                                         SharedMemRecEmbedding, make_embedding)
from memrec_tf.models.features import FeatureSpec
from memrec_tf.models.vocabulary_embedding import (VocabularyEmbedding, VocabularyLookup,
                                                   column_cardinalities, frequency_index,
                                                   vocabulary_embedding)

MODELS = ("dlrm", "dcn")
_BUILDERS = {"dlrm": build_dlrm, "dcn": build_dcn}


def build_model(kind, feature_spec, embedding="memrec", embedding_options=None,
                embedding_dim=16, seed=0, vocabulary=None, **model_options):
    """A DLRM or DCN-v2 over a spec's features with the chosen embedding.

    Args:
      kind: "dlrm" or "dcn".
      feature_spec: a `FeatureSpec`, or a dict with num_dense, cardinalities
        and optionally vocabulary_size (global dense ids) or dense_ids
        (per-feature dense ids).
      embedding: one of METHODS.
      embedding_options: the embedding layer's own arguments (e.g.
        `BudgetConfig.options`); memrec needs num_token_rows, hashing
        num_rows, qr remainder_rows, full none.
      embedding_dim: d.
      seed: seeds the embedding's hashes.
      vocabulary: optional per-feature `(values, counts)` of the training
        ids (`memrec_tf.training.count_values`): the model then maps raw ids
        to dense indices by training frequency itself (`VocabularyEmbedding`)
        and the embedding reads those; feature_spec's cardinalities must be
        `column_cardinalities(vocabulary)`.
      **model_options: those of `build_dlrm` (bottom_mlp, top_mlp) or
        `build_dcn` (num_cross_layers, projection_dim, deep_layers,
        structure).

    Returns:
      An uncompiled functional `keras.Model`; its embedding layer is named
      "embedding".

    Raises:
      ValueError: an unknown kind or embedding, or a bad option.
    """
    if kind not in _BUILDERS:
        raise ValueError(f"kind must be one of {MODELS}, got {kind!r}")
    spec = FeatureSpec.from_any(feature_spec)
    if vocabulary is not None:
        if list(spec.cardinalities) != column_cardinalities(vocabulary):
            raise ValueError("with a vocabulary, the cardinalities must be its values + 1 per "
                             f"feature, {column_cardinalities(vocabulary)}; got "
                             f"{list(spec.cardinalities)}")
        layer = vocabulary_embedding(embedding, vocabulary, embedding_dim, seed=seed,
                                     **dict(embedding_options or {}))
    else:
        layer = make_embedding(embedding, spec, embedding_dim, seed=seed,
                               **dict(embedding_options or {}))
    return _BUILDERS[kind](spec, layer, **model_options)


def embedding_layers(model):
    """The `CategoricalEmbedding` layers of a model, nested models included."""
    found = []
    for layer in model.layers:
        if isinstance(layer, CategoricalEmbedding):
            found.append(layer)
        elif hasattr(layer, "layers"):
            found.extend(embedding_layers(layer))
    return found


def embedding_report(model):
    """`EmbeddingBytes` of all a model's embedding layers: their bytes and the full bytes.

    Raises:
      ValueError: the model has no `CategoricalEmbedding`.
    """
    layers = embedding_layers(model)
    if not layers:
        raise ValueError(f"model {model.name!r} has no memrec_tf.models embedding layer")
    total = layers[0].embedding_bytes()
    for layer in layers[1:]:
        total = total + layer.embedding_bytes()
    return total


__all__ = ["METHODS", "MODELS", "BudgetConfig", "CategoricalEmbedding", "CrossLayer",
           "DotInteraction", "EmbeddingBytes", "FeatureSpec", "FullEmbedding",
           "HashingEmbedding", "PerFeatureMemRecEmbedding", "QREmbedding",
           "SharedMemRecEmbedding", "VocabularyEmbedding", "VocabularyLookup",
           "budget_configs", "build_dcn", "build_dlrm", "build_model", "column_cardinalities",
           "embedding_layers", "embedding_report", "frequency_index", "full_config", "hashing_config",
           "make_embedding", "memrec_config", "memrec_per_feature_config", "qr_config",
           "vocabulary_embedding"]
