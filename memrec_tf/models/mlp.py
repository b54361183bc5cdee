"""Stacks of Dense layers, shared by the models."""
import tensorflow as tf

keras = tf.keras


def check_units(name, units):
    """`units` as a list of positive ints, or a ValueError quoting it."""
    units = list(units)
    if not all(isinstance(u, int) and u > 0 for u in units):
        raise ValueError(f"{name} must be a list of positive ints, got {units!r}")
    return units


def dense_stack(x, units, name, activation="relu"):
    """x through Dense(u, activation) for each u in units, named name_0, name_1, ..."""
    for i, width in enumerate(units):
        x = keras.layers.Dense(width, activation=activation, name=f"{name}_{i}")(x)
    return x
