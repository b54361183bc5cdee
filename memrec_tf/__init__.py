"""memrec_tf: MEM-REC embeddings that fit in cache, for TensorFlow and Keras."""
