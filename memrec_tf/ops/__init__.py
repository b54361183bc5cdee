"""The MEM-REC ops: which rows a value reads (`signature`), the fused op
library (`fused`: loading, wrappers, gradient) and its bit-identical twin in
TensorFlow's built-in ops (`core`).

The fused op's wrappers are re-exported here: `memrec_tf.ops.lookup`,
`hash_rows`, `load_library`, `is_available`, `OpLibraryError`; and
`gradient_format`, which chooses dense or sparse gradients of the tables.
"""
from memrec_tf.ops.fused import (CHECKSUM_SUFFIX, LIBRARY_ENV, REBUILD_COMMAND, OpLibraryError,
                                 build_info, hash_rows, is_available, library_path, load_library,
                                 lookup)
from memrec_tf.ops.table_gradients import gradient_format

__all__ = ["CHECKSUM_SUFFIX", "LIBRARY_ENV", "OpLibraryError", "REBUILD_COMMAND", "build_info",
           "gradient_format", "hash_rows", "is_available", "library_path", "load_library", "lookup"]
