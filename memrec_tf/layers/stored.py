"""The token tables of a model's MemRecEmbedding layers read as they are
stored for serving (int8 or bfloat16; see `memrec_tf.ops.quantize`)."""
import contextlib

import tensorflow as tf

from memrec_tf.layers.memrec_embedding import MemRecEmbedding
from memrec_tf.ops import quantize


def memrec_layers(model):
    """The distinct MemRecEmbedding layers of a model (or the layer itself), in order."""
    # pylint: disable-next=protected-access
    every = model._flatten_layers(include_self=True, recursive=True)
    layers = [layer for layer in every if isinstance(layer, MemRecEmbedding)]
    return list({id(layer): layer for layer in layers}.values())


@contextlib.contextmanager
def stored_tables(layers, table_dtype):
    """Every layer reads its token table as it is stored for serving.

    Inside the block, each MemRecEmbedding of `layers` looks up rows from its
    token table rounded to `table_dtype` ("float32", "bfloat16" or "int8"
    with a scale per row; see `memrec_tf.ops.quantize`), held in new
    non-trainable tf.Variables that are not among the layer's weights. The
    weight table stays float32. Used to export (only the stored tables are
    written) and to evaluate a model as it will be served; the block is for
    inference only (a stored table has no gradient). The float32 tables are
    untouched, and each layer is restored on exit.
    """
    table_dtype = quantize.check_table_dtype(table_dtype)
    if table_dtype == "float32":
        yield
        return
    try:
        for layer in layers:
            values, scales = quantize.quantize_rows(layer.token_table, table_dtype)
            stored = (tf.Variable(values, trainable=False, name=f"{layer.name}_stored_tokens"),
                      None if scales is None else
                      tf.Variable(scales, trainable=False, name=f"{layer.name}_token_scales"))
            # Set around Keras' attribute tracking: these are not layer weights.
            object.__setattr__(layer, "_stored_token_table", stored)
        yield
    finally:
        for layer in layers:
            object.__setattr__(layer, "_stored_token_table", None)
