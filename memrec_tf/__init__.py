"""memrec_tf: MEM-REC embeddings that fit in cache, for TensorFlow and Keras.

    import memrec_tf
    layer = memrec_tf.MemRecEmbedding(output_dim=16, num_token_rows=2**16)

Set TF_USE_LEGACY_KERAS=1 before importing to use tf-keras (TensorFlow
Recommenders) instead of Keras 3.
"""
from memrec_tf.layer import MemRecEmbedding
from memrec_tf.memory import LayerMemory, format_report, memory_report
from memrec_tf.ops import OpLibraryError
from memrec_tf.signature import Signature
from memrec_tf import export  # noqa: E402  memrec_tf.export.export / .load

__version__ = "0.1.0"

__all__ = ["MemRecEmbedding", "LayerMemory", "OpLibraryError", "Signature",
           "format_report", "memory_report"]
