"""DCN-v2 (Wang et al. 2021): cross network and deep tower over the embeddings."""
import tensorflow as tf

from memrec_tf.features import FeatureSpec
from memrec_tf.models.inputs import make_inputs
from memrec_tf.models import mlp

keras = tf.keras

STRUCTURES = ("stacked", "parallel")


@keras.utils.register_keras_serializable(package="memrec_tf")
class CrossLayer(keras.layers.Layer):
    """One DCN-v2 cross layer: x_{l+1} = x0 * (W x_l + b) + x_l.

    Args:
      projection_dim: None for a full-rank W [D, D]; r for the low-rank
        W = U V (V [D, r], U [r, D]), 2 D r weights instead of D^2.
      kernel_initializer: initializer of W (or U and V).
      **kwargs: passed to `keras.layers.Layer`.

    Input: [x0, x_l], both [B, D]. Output: [B, D].
    """

    def __init__(self, projection_dim=None, kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        if projection_dim is not None and (not isinstance(projection_dim, int)
                                           or projection_dim < 1):
            raise ValueError(f"projection_dim must be None or a positive int, got "
                             f"{projection_dim!r}")
        self.projection_dim = projection_dim
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        width = tuple(input_shape[0])[-1]
        if width is None:
            raise ValueError(f"CrossLayer needs a static width, got shapes {input_shape}")
        width = int(width)
        if self.projection_dim is None:
            self.kernel = self.add_weight(name="kernel", shape=(width, width),
                                          initializer=self.kernel_initializer)
        else:
            self.down = self.add_weight(name="down", shape=(width, self.projection_dim),
                                        initializer=self.kernel_initializer)
            self.up = self.add_weight(name="up", shape=(self.projection_dim, width),
                                      initializer=self.kernel_initializer)
        self.bias = self.add_weight(name="bias", shape=(width,), initializer="zeros")
        self.built = True

    def call(self, inputs):
        x0, x = inputs
        if self.projection_dim is None:
            mixed = tf.matmul(x, self.kernel)
        else:
            mixed = tf.matmul(tf.matmul(x, self.down), self.up)
        return x0 * (mixed + self.bias) + x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def get_config(self):
        config = super().get_config()
        config.update(projection_dim=self.projection_dim,
                      kernel_initializer=keras.initializers.serialize(self.kernel_initializer))
        return config


def build_dcn(feature_spec, embedding, num_cross_layers=2, projection_dim=None,
              deep_layers=(64, 32), structure="stacked", name="dcn"):
    """A DCN-v2 over a spec's inputs, with a given embedding layer.

    x0 is the flattened embeddings [B, F d] concatenated with the dense
    features. "stacked": x0 -> cross layers -> deep tower -> sigmoid unit;
    "parallel": the cross output and the deep tower's output of x0,
    concatenated -> sigmoid unit.

    Args:
      feature_spec: a `FeatureSpec` (or a dict of its fields).
      embedding: a `CategoricalEmbedding` for the spec's features.
      num_cross_layers: cross layers (>= 1).
      projection_dim: None (full-rank) or the rank of the low-rank cross layers.
      deep_layers: widths of the deep tower (may be empty when stacked).
      structure: "stacked" or "parallel".
      name: the model's name.

    Returns:
      An uncompiled functional `keras.Model` with inputs {"dense",
      "categorical"} ("dense" only when num_dense > 0), output [B, 1].

    Raises:
      ValueError: an argument out of range (the message quotes it).
    """
    spec = FeatureSpec.from_any(feature_spec)
    if not isinstance(num_cross_layers, int) or num_cross_layers < 1:
        raise ValueError(f"num_cross_layers must be a positive int, got {num_cross_layers!r}")
    if structure not in STRUCTURES:
        raise ValueError(f"structure must be one of {STRUCTURES}, got {structure!r}")
    deep_layers = mlp.check_units("deep_layers", deep_layers)
    if structure == "parallel" and not deep_layers:
        raise ValueError("a parallel DCN needs a deep tower, got deep_layers=[]")
    inputs = make_inputs(spec)
    embedded = embedding(inputs["categorical"])
    x0 = keras.layers.Flatten(name="flat_embeddings")(embedded)
    if spec.num_dense:
        x0 = keras.layers.Concatenate(name="x0")([x0, inputs["dense"]])
    x = x0
    for i in range(num_cross_layers):
        x = CrossLayer(projection_dim, name=f"cross_{i}")([x0, x])
    if structure == "stacked":
        x = mlp.dense_stack(x, deep_layers, "deep")
    else:
        x = keras.layers.Concatenate(name="cross_and_deep")(
            [x, mlp.dense_stack(x0, deep_layers, "deep")])
    output = keras.layers.Dense(1, activation="sigmoid", name="prediction")(x)
    return keras.Model(inputs=inputs, outputs=output, name=name)
