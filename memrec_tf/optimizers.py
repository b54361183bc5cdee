"""Embedding optimizers: a MemRecEmbedding's token table updated in its own
backward pass, as TensorFlow's TPU embeddings update theirs.

    layer = memrec_tf.MemRecEmbedding(
        16, 2**16, embedding_optimizer=memrec_tf.optimizers.Adagrad(0.05))

With an embedding optimizer the token table is not a trainable weight.
Computing the gradient through the layer (what every `model.fit` step
does) updates the token table there and then: on CPU the fused kernel sums
each row's gradient and applies it in place, never writing the table-sized
gradient out. The weight table stays a trainable weight, updated by the
model's optimizer. The optimizer's state (Adagrad's accumulator, Adam's
moments, the step count that a learning-rate schedule reads) is held in
non-trainable weights of the layer, so checkpoints, `model.save` and
`save_weights` keep it.

The updates are those of Keras 3's optimizers of the same name:

* SGD:     table -= grad * learning_rate    (Keras' SGD without momentum)
* Adagrad: accumulator += grad ** 2
           table -= learning_rate * grad / sqrt(accumulator + epsilon)
* Adam:    momentum += (grad - momentum) * (1 - beta_1)
           velocity += (grad ** 2 - velocity) * (1 - beta_2)
           table -= momentum * alpha / (sqrt(velocity) + epsilon), with
           alpha = learning_rate * sqrt(1 - beta_2^t) / (1 - beta_1^t) at
           update t; as Keras' Adam, every row moves every step (the
           untouched ones with a zero gradient).

SGD and Adam train bit for bit as Keras' do; Adagrad to float32 rounding
(TensorFlow's graph optimizer rewrites Keras' x / sqrt(y) as x * rsqrt(y)).

`learning_rate` is a float or a `keras.optimizers.schedules.LearningRateSchedule`,
called with the number of updates applied before this one.
"""
import tensorflow as tf

keras = tf.keras


def _is_number(value):
    """An int or a float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class EmbeddingOptimizer:
    """The update a MemRecEmbedding applies to its token table (see the module).

    Attributes:
      name: "sgd", "adagrad" or "adam", the update of the fused kernel.
      slot_names: the optimizer's per-element state, one table-shaped weight each.
    """
    name = None
    slot_names = ()

    def __init__(self, learning_rate):
        schedule = isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule)
        if not schedule and not (_is_number(learning_rate) and learning_rate > 0):
            raise ValueError(
                "learning_rate must be a positive number or a keras.optimizers.schedules."
                f"LearningRateSchedule, got {learning_rate!r}")
        self.learning_rate = learning_rate if schedule else float(learning_rate)

    def learning_rate_at(self, iterations):
        """The float32 learning rate of the update after `iterations` updates."""
        if isinstance(self.learning_rate, float):
            return tf.constant(self.learning_rate, tf.float32)
        return tf.cast(self.learning_rate(iterations), tf.float32)

    def slot_initial_value(self, slot_name):
        """The value every element of slot `slot_name` starts from."""
        if slot_name not in self.slot_names:
            raise KeyError(slot_name)
        return 0.0

    def kernel_learning_rate(self, iterations):
        """The fused kernel's `learning_rate` input after `iterations` updates."""
        return self.learning_rate_at(iterations)

    def kernel_attrs(self):
        """The fused kernel's attributes of this optimizer (see MemRecLookupGradApply)."""
        return {}

    def apply(self, table, grad, slots, iterations):
        """The update in TensorFlow's built-in ops (the path off the fused kernel).

        Args:
          table: the token table's tf.Variable.
          grad: its gradient, a dense tensor or `tf.IndexedSlices` with distinct rows.
          slots: the slot variables, in `slot_names` order.
          iterations: the number of updates applied before this one.

        Returns:
          The op that applies the update.
        """
        raise NotImplementedError

    def get_config(self):
        rate = self.learning_rate
        if not isinstance(rate, float):
            rate = keras.optimizers.schedules.serialize(rate)
        return {"learning_rate": rate}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("learning_rate"), dict):
            config["learning_rate"] = keras.optimizers.schedules.deserialize(
                config["learning_rate"])
        return cls(**config)

    def __repr__(self):
        settings = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({settings})"


def _rows(grad):
    """(values, rows) of an IndexedSlices gradient, or (dense gradient, None)."""
    if isinstance(grad, tf.IndexedSlices):
        return grad.values, grad.indices
    return grad, None


class SGD(EmbeddingOptimizer):
    """Plain stochastic gradient descent: table -= grad * learning_rate."""
    name = "sgd"

    def __init__(self, learning_rate=0.01):
        super().__init__(learning_rate)

    def apply(self, table, grad, slots, iterations):
        values, rows = _rows(grad)
        step = values * self.learning_rate_at(iterations)
        if rows is None:
            return table.assign_sub(step)
        return table.scatter_sub(tf.IndexedSlices(step, rows))


class Adagrad(EmbeddingOptimizer):
    """Adagrad with Keras 3's update and defaults (initial accumulator 0.1)."""
    name = "adagrad"
    slot_names = ("accumulator",)

    def __init__(self, learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-7):
        super().__init__(learning_rate)
        for key, value in (("initial_accumulator_value", initial_accumulator_value),
                           ("epsilon", epsilon)):
            if not (_is_number(value) and value >= 0):
                raise ValueError(f"{key} must be a number >= 0, got {value!r}")
        self.initial_accumulator_value = float(initial_accumulator_value)
        self.epsilon = float(epsilon)

    def slot_initial_value(self, slot_name):
        super().slot_initial_value(slot_name)
        return self.initial_accumulator_value

    def kernel_attrs(self):
        return {"epsilon": self.epsilon}

    def apply(self, table, grad, slots, iterations):
        learning_rate = self.learning_rate_at(iterations)
        (accumulator,) = slots
        values, rows = _rows(grad)
        if rows is None:
            total = accumulator.assign_add(tf.square(values))
            return table.assign_sub(learning_rate * values / tf.sqrt(total + self.epsilon))
        total = tf.gather(accumulator, rows) + tf.square(values)
        update_accumulator = accumulator.scatter_update(tf.IndexedSlices(total, rows))
        with tf.control_dependencies([update_accumulator]):
            step = learning_rate * values / tf.sqrt(total + self.epsilon)
            return table.scatter_sub(tf.IndexedSlices(step, rows))

    def get_config(self):
        return dict(super().get_config(),
                    initial_accumulator_value=self.initial_accumulator_value,
                    epsilon=self.epsilon)


class Adam(EmbeddingOptimizer):
    """Adam with Keras 3's update and defaults (no amsgrad)."""
    name = "adam"
    slot_names = ("momentum", "velocity")

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
        super().__init__(learning_rate)
        for key, value in (("beta_1", beta_1), ("beta_2", beta_2)):
            if not (_is_number(value) and 0 <= value < 1):
                raise ValueError(f"{key} must be a number in [0, 1), got {value!r}")
        if not (_is_number(epsilon) and epsilon >= 0):
            raise ValueError(f"epsilon must be a number >= 0, got {epsilon!r}")
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)

    def kernel_learning_rate(self, iterations):
        # Keras' bias-corrected step size, in the same float32 ops.
        local_step = tf.cast(iterations + 1, tf.float32)
        beta_1_power = tf.pow(tf.cast(self.beta_1, tf.float32), local_step)
        beta_2_power = tf.pow(tf.cast(self.beta_2, tf.float32), local_step)
        return (self.learning_rate_at(iterations) * tf.sqrt(1 - beta_2_power)
                / (1 - beta_1_power))

    def kernel_attrs(self):
        # 1 - beta as Keras computes it: in Python floats, then float32.
        return {"epsilon": self.epsilon, "one_minus_beta_1": 1 - self.beta_1,
                "one_minus_beta_2": 1 - self.beta_2}

    def apply(self, table, grad, slots, iterations):
        momentum, velocity = slots
        # Every row moves, as in Keras' Adam: the gradient is made dense.
        grad = tf.convert_to_tensor(grad)
        alpha = self.kernel_learning_rate(iterations)
        m = momentum.assign_add((grad - momentum) * (1 - self.beta_1))
        v = velocity.assign_add((tf.square(grad) - velocity) * (1 - self.beta_2))
        return table.assign_sub((m * alpha) / (tf.sqrt(v) + self.epsilon))

    def get_config(self):
        return dict(super().get_config(), beta_1=self.beta_1, beta_2=self.beta_2,
                    epsilon=self.epsilon)


_CLASSES = {cls.__name__: cls for cls in (SGD, Adagrad, Adam)}
_NAMES = {cls.name: cls for cls in (SGD, Adagrad, Adam)}


def get(identifier):
    """An EmbeddingOptimizer from itself, a name ("sgd", "adagrad", "adam", with
    Keras' default learning rates), a `serialize` dict, or None (no embedding
    optimizer).

    Raises:
      ValueError: anything else.
    """
    if identifier is None or isinstance(identifier, EmbeddingOptimizer):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _NAMES:
        return _NAMES[identifier.lower()]()
    if isinstance(identifier, dict) and identifier.get("class_name") in _CLASSES:
        return _CLASSES[identifier["class_name"]].from_config(identifier.get("config", {}))
    raise ValueError(
        "embedding_optimizer must be memrec_tf.optimizers.SGD(...), Adagrad(...) or "
        f"Adam(...), the name 'sgd', 'adagrad' or 'adam', or None; got {identifier!r}")


def serialize(optimizer):
    """A JSON-able dict of `optimizer` that `get` turns back into it (None: None)."""
    if optimizer is None:
        return None
    return {"class_name": type(optimizer).__name__, "config": optimizer.get_config()}
