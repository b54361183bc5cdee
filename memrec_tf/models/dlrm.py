"""DLRM (Naumov et al. 2019): bottom MLP, embeddings, dot interaction, top MLP."""
import tensorflow as tf

from memrec_tf.features import FeatureSpec
from memrec_tf.models.inputs import make_inputs
from memrec_tf.models import mlp

keras = tf.keras


@keras.utils.register_keras_serializable(package="memrec_tf")
class DotInteraction(keras.layers.Layer):
    """Pairwise dot products of n vectors: [B, n, d] -> [B, n (n - 1) / 2].

    Keeps the upper triangle of T T^T without its diagonal, row by row (pair
    (i, j) with i < j), as DLRM does.
    """

    def build(self, input_shape):
        shape = tuple(input_shape)
        if len(shape) != 3 or shape[1] is None:
            raise ValueError(f"DotInteraction needs [batch, n, d] with a static n, got {shape}")
        n = int(shape[1])
        self._pairs = [i * n + j for i in range(n) for j in range(i + 1, n)]
        self._n = n
        self.built = True

    def call(self, inputs):
        products = tf.matmul(inputs, inputs, transpose_b=True)  # [B, n, n]
        flat = tf.reshape(products, [-1, self._n * self._n])
        return tf.gather(flat, self._pairs, axis=1)

    def compute_output_shape(self, input_shape):
        n = int(input_shape[1])
        return (input_shape[0], n * (n - 1) // 2)


def build_dlrm(feature_spec, embedding, bottom_mlp=(64,), top_mlp=(64, 32), name="dlrm"):
    """A DLRM over a spec's inputs, with a given embedding layer.

    The bottom MLP maps the dense features through `bottom_mlp` to d (the
    embedding width, ReLU throughout); its output and the F embeddings
    interact by pairwise dot products; the interactions, concatenated with
    the bottom output, go through `top_mlp` to one sigmoid unit. Without dense
    features there is no bottom MLP: the top MLP sees the interactions of the
    embeddings alone.

    Args:
      feature_spec: a `FeatureSpec` (or a dict of its fields).
      embedding: a `CategoricalEmbedding` for the spec's features.
      bottom_mlp: hidden widths of the bottom MLP, before its last layer (d).
      top_mlp: hidden widths of the top MLP, before its one output unit.
      name: the model's name.

    Returns:
      An uncompiled functional `keras.Model` with inputs {"dense",
      "categorical"} ("dense" only when num_dense > 0), output [B, 1].

    Raises:
      ValueError: fewer than two vectors to interact, or bad widths.
    """
    spec = FeatureSpec.from_any(feature_spec)
    bottom_mlp = mlp.check_units("bottom_mlp", bottom_mlp)
    top_mlp = mlp.check_units("top_mlp", top_mlp)
    vectors = spec.num_categorical + (1 if spec.num_dense else 0)
    if vectors < 2:
        raise ValueError("DLRM needs at least two vectors to interact (embeddings plus the "
                         f"bottom MLP output), got {spec.num_categorical} categorical and "
                         f"{spec.num_dense} dense features")
    inputs = make_inputs(spec)
    d = embedding.output_dim
    embedded = embedding(inputs["categorical"])  # [B, F, d]
    if spec.num_dense:
        bottom = mlp.dense_stack(inputs["dense"], bottom_mlp + [d], "bottom")
        stacked = keras.layers.Concatenate(axis=1, name="stack")(
            [keras.layers.Reshape((1, d), name="bottom_vector")(bottom), embedded])
        pairs = DotInteraction(name="interaction")(stacked)
        top_in = keras.layers.Concatenate(name="top_input")([bottom, pairs])
    else:
        top_in = DotInteraction(name="interaction")(embedded)
    hidden = mlp.dense_stack(top_in, top_mlp, "top")
    output = keras.layers.Dense(1, activation="sigmoid", name="prediction")(hidden)
    return keras.Model(inputs=inputs, outputs=output, name=name)
