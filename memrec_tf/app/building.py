"""What `memrec train` builds: the embedding sized to a compression, the model
over the data's feature spec, and its compilation."""
import tensorflow as tf

from memrec_tf import layers, models, optimizers, sizing
from memrec_tf.app.errors import UsageError

keras = tf.keras

# Embeddings of dense indices that the model maps raw ids to by training
# frequency (layers.VocabularyEmbedding), by the method that reads them:
# `memrec plan`'s vocabulary configurations (the shared MEM-REC layer,
# without and with head rows), and the collision-free baselines of the
# accuracy benchmarks (one QR pair, one full table of all counted values).
VOCABULARY_METHODS = {"memrec_vocabulary": "memrec", "memrec_vocabulary_head": "memrec",
                      "qr_vocabulary": "qr", "full_vocabulary": "full"}
EMBEDDINGS = layers.METHODS + tuple(VOCABULARY_METHODS)
# The embeddings whose sizes --num-token-rows, --num-hashes, ... set.
MEMREC_EMBEDDINGS = ("memrec", "memrec_per_feature") + tuple(
    name for name, inner in VOCABULARY_METHODS.items() if inner == "memrec")
OPTIMIZERS = {"adam": lambda lr: keras.optimizers.Adam(lr),
              "adagrad": lambda lr: keras.optimizers.Adagrad(lr),
              "sgd": lambda lr: keras.optimizers.SGD(lr)}


def embedding_optimizer(embedding, optimizer, learning_rate):
    """The embedding optimizer of --fused-update: --optimizer's, at --learning-rate
    (with the defaults of the Keras optimizers of OPTIMIZERS)."""
    if embedding not in MEMREC_EMBEDDINGS:
        raise UsageError(f"--fused-update updates MEM-REC token tables: it applies to "
                         f"--embedding {' / '.join(MEMREC_EMBEDDINGS)}, not {embedding}")
    _check_optimizer(optimizer)
    return type(optimizers.get(optimizer))(learning_rate)


def _check_optimizer(name):
    if name not in OPTIMIZERS:
        raise UsageError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}")


def embedding_options(method, embedding_dim, cardinalities, compression, overrides,
                      vocabulary_size=0, head_rows=False, table_dtype="float32",
                      mapping_bytes=0, embedding=None):
    """The embedding layer's options: sized to 1/compression, then overridden.

    The budget counts the tables as served in `table_dtype` (MEM-REC's token
    tables; see `memrec_tf.sizing.tables`) and `mapping_bytes` (an id ->
    index mapping the model holds), against float32 full tables.
    `embedding` is the --embedding name errors quote (default `method`).

    With `vocabulary_size`, the layer reads that many global dense indices
    (the cardinalities are not used); `head_rows` then gives a MEM-REC
    layer `sizing.head_rows` of its token rows as head rows, as
    `memrec plan` sizes its head-row configuration.
    """
    if method == "full":
        return {}
    sizers = {"memrec": sizing.memrec_config,
              "memrec_per_feature": sizing.memrec_per_feature_config,
              "hashing": sizing.hashing_config, "qr": sizing.qr_config}
    if method not in sizers:
        raise UsageError(f"unknown embedding {method!r}; choose one of {layers.METHODS}")
    kwargs = {"table_dtype": table_dtype}
    if method.startswith("memrec"):
        for key in ("num_hashes", "num_weight_hashes", "weight_mode"):
            if overrides.get(key) is not None:
                kwargs[key] = overrides[key]

    budget = {"compression": compression}
    if mapping_bytes:
        # The id -> index mapping is served too: the tables get what it leaves.
        full = sizing.full_table_bytes(cardinalities, vocabulary_size, embedding_dim)
        total = sizing.budget_bytes(full, compression=compression)
        if total <= mapping_bytes:
            raise UsageError(
                f"at --compression {compression:g} the budget is {total:,} bytes, and the "
                f"id->index mapping of --embedding {embedding or method} alone takes "
                f"{mapping_bytes:,}: pass a smaller --compression, or --embedding {method} "
                "(raw ids hashed, no mapping)")
        budget = {"budget": total - mapping_bytes}

    def size(**extra):
        return sizers[method](embedding_dim, cardinalities, vocabulary_size=vocabulary_size,
                              **budget, **kwargs, **extra)
    try:
        config = size()
        if head_rows:
            config = size(num_head_rows=sizing.head_rows(config.options["num_token_rows"],
                                                           vocabulary_size))
    except ValueError as e:
        raise UsageError(str(e)) from e
    options = dict(config.options)
    options.update({k: v for k, v in overrides.items() if v is not None})
    return options


def compile_model(model, learning_rate, optimizer="adam"):
    _check_optimizer(optimizer)
    model.compile(optimizer=OPTIMIZERS[optimizer](learning_rate),
                  loss=keras.losses.BinaryCrossentropy(),
                  metrics=[keras.metrics.AUC(name="auc", num_thresholds=4000),
                           keras.metrics.BinaryCrossentropy(name="logloss")])


def build_model(model_kind, spec, embedding, embedding_dim, compression, overrides,
                hash_seed=0, vocabulary=None, table_dtype="float32", embedding_optimizer=None):
    """The uncompiled model of `memrec train` and its embedding options.

    Args:
      spec: the data's `FeatureSpec`, with every cardinality.
      embedding: one of EMBEDDINGS; the VOCABULARY_METHODS need `vocabulary`,
        the training counts of `memrec_tf.data.count_values`.
      overrides: the MEM-REC sizes given as options (None: sized).
      table_dtype: the format MEM-REC token tables are served in; the budget
        counts those bytes.
      embedding_optimizer: a `memrec_tf.optimizers` optimizer that updates
        the MEM-REC token tables in their backward pass (None: the model's
        optimizer trains them).

    Returns:
      (model, embedding options).
    """
    method = VOCABULARY_METHODS.get(embedding, embedding)
    if vocabulary is not None:
        options = embedding_options(method, embedding_dim, None, compression, overrides,
                                    vocabulary_size=sum(spec.cardinalities),
                                    head_rows=embedding == "memrec_vocabulary_head",
                                    table_dtype=table_dtype,
                                    mapping_bytes=sizing.vocabulary_mapping_bytes(
                                        spec.cardinalities), embedding=embedding)
    else:
        options = embedding_options(method, embedding_dim, spec.cardinalities, compression,
                                    overrides, table_dtype=table_dtype)
    if embedding_optimizer is not None:
        options["embedding_optimizer"] = optimizers.serialize(embedding_optimizer)
    model = models.build_model(model_kind, spec, embedding=method, embedding_options=options,
                               embedding_dim=embedding_dim, seed=hash_seed,
                               vocabulary=vocabulary)
    return model, options
