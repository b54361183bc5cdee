"""memrec_tf: MEM-REC embeddings that fit in cache, for TensorFlow and Keras.

    import memrec_tf
    layer = memrec_tf.MemRecEmbedding(output_dim=16, num_token_rows=2**16)
    memrec_tf.export(model, "/models/ctr/1", mode="core")
    loaded = memrec_tf.load("/models/ctr/1")

Set TF_USE_LEGACY_KERAS=1 before importing to use tf-keras (TensorFlow
Recommenders) instead of Keras 3.

Layout: `ops` (the hash, the fused op and its built-in-ops twin), `layers`
(MemRecEmbedding and the categorical embeddings), `models` (DLRM, DCN),
`features` (FeatureSpec), `optimizers` (embedding optimizers: the token
table updated in the backward pass), `data` (readers), `sizing` (every byte count),
`saved_model` (export, load) and `app` (the `memrec` command).
"""
# Importing the layers and models registers every class a saved model holds,
# so keras.models.load_model reads what memrec_tf wrote once memrec_tf is imported.
from memrec_tf import layers as _layers  # noqa: F401
from memrec_tf import models as _models  # noqa: F401
from memrec_tf import optimizers
from memrec_tf.layers.memrec_embedding import MemRecEmbedding
from memrec_tf.ops import OpLibraryError
from memrec_tf.ops.signature import Signature
from memrec_tf.saved_model import export, load
from memrec_tf.sizing import LayerMemory, format_report, memory_report

# Registering the fused ops now lets a plain tf.saved_model.load read a fused
# export once memrec_tf is imported; without the library, nothing happens here
# (the layers warn and use the built-in ops when first called).
from memrec_tf import ops as _ops  # noqa: E402
_ops.is_available()

__version__ = "0.1.0"

__all__ = ["LayerMemory", "MemRecEmbedding", "OpLibraryError", "Signature", "export",
           "format_report", "load", "memory_report", "optimizers"]
