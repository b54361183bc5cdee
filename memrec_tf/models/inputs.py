"""The named Keras inputs of a model over a `memrec_tf.features.FeatureSpec`."""
import tensorflow as tf

keras = tf.keras


def make_inputs(spec):
    """The named Keras Inputs of a model, by name.

    "dense": float32 [B, num_dense] (left out when spec.num_dense is 0);
    "categorical": int64 [B, F].
    """
    inputs = {}
    if spec.num_dense:
        inputs["dense"] = keras.Input(shape=(spec.num_dense,), dtype="float32", name="dense")
    inputs["categorical"] = keras.Input(
        shape=(spec.num_categorical,), dtype="int64", name="categorical")
    return inputs
