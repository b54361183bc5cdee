"""Recommendation models (DLRM, DCN-v2) over interchangeable embeddings.

    from memrec_tf import models, sizing
    from memrec_tf.features import FeatureSpec
    spec = FeatureSpec.of(num_dense=13, cardinalities=[1000] * 26)
    config = sizing.memrec_config(16, spec.cardinalities, compression=16)
    model = models.build_model("dlrm", spec, embedding="memrec",
                               embedding_options=config.options)
    model.compile("adam", "binary_crossentropy")
    models.embedding_report(model)  # sizing.EmbeddingBytes(table_bytes=..., ...)

Inputs are {"dense": float32 [B, num_dense], "categorical": int64 [B, F]}
("dense" only when num_dense > 0); the output is a probability [B, 1].
"""
from memrec_tf.data.counting import counted_cardinalities
from memrec_tf.features import FeatureSpec
from memrec_tf.layers import (METHODS, CategoricalEmbedding, make_embedding,
                              vocabulary_embedding)
from memrec_tf.models.dcn import CrossLayer, build_dcn
from memrec_tf.models.dlrm import DotInteraction, build_dlrm

MODELS = ("dlrm", "dcn")
_BUILDERS = {"dlrm": build_dlrm, "dcn": build_dcn}


def build_model(kind, feature_spec, embedding="memrec", embedding_options=None,
                embedding_dim=16, seed=0, vocabulary=None, **model_options):
    """A DLRM or DCN-v2 over a spec's features with the chosen embedding.

    Args:
      kind: "dlrm" or "dcn".
      feature_spec: a `memrec_tf.features.FeatureSpec` with every
        cardinality (or a dict that `FeatureSpec.from_any` reads).
      embedding: one of METHODS.
      embedding_options: the embedding layer's own arguments (e.g.
        `BudgetConfig.options`); memrec needs num_token_rows, hashing
        num_rows, qr remainder_rows, full none.
      embedding_dim: d.
      seed: seeds the embedding's hashes.
      vocabulary: optional per-feature `(values, counts)` of the training
        ids (`memrec_tf.data.count_values`): the model then maps raw ids
        to dense indices by training frequency itself (`VocabularyEmbedding`)
        and the embedding reads those; feature_spec's cardinalities must be
        `memrec_tf.data.counted_cardinalities(vocabulary)`.
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
    spec.known_cardinalities()
    if vocabulary is not None:
        if list(spec.cardinalities) != counted_cardinalities(vocabulary):
            raise ValueError("with a vocabulary, the cardinalities must be its values + 1 per "
                             f"feature, {counted_cardinalities(vocabulary)}; got "
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


def embedding_report(model, table_dtype=None):
    """`sizing.EmbeddingBytes` of all a model's embedding layers: their bytes and the full bytes.

    `table_dtype` None counts the tables as they are held; "float32",
    "bfloat16" or "int8" as served in that format
    (`CategoricalEmbedding.embedding_bytes`).

    Raises:
      ValueError: the model has no `CategoricalEmbedding`.
    """
    layers = embedding_layers(model)
    if not layers:
        raise ValueError(f"model {model.name!r} has no memrec_tf.models embedding layer")
    counts = [layer.embedding_bytes(table_dtype) for layer in layers]
    return sum(counts[1:], counts[0])


__all__ = ["MODELS", "CrossLayer", "DotInteraction", "build_dcn", "build_dlrm", "build_model",
           "embedding_layers", "embedding_report"]
