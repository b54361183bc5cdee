"""Writing a model's serving graph: input specs, the serving function, and the
Keras 3 / tf-keras SavedModel writers (used by `memrec_tf.saved_model.export`)."""
import contextlib

import tensorflow as tf

from memrec_tf.layers.stored import memrec_layers

SIGNATURE_KEY = "serving_default"

def is_keras3(model):
    try:
        import keras  # pylint: disable=g-import-not-at-top
    except ImportError:
        return False
    return int(keras.__version__.split(".")[0]) >= 3 and isinstance(model, keras.Model)


def _is_keras3_graph_model(model):
    """A Keras 3 functional or Sequential model (inputs known with dtypes)."""
    import keras  # pylint: disable=g-import-not-at-top
    from keras.src.models.functional import Functional  # pylint: disable=g-import-not-at-top

    return isinstance(model, (Functional, keras.Sequential))


def is_tf_keras(model):
    try:
        import tf_keras  # pylint: disable=g-import-not-at-top
    except ImportError:
        return False
    return isinstance(model, tf_keras.Model)


@contextlib.contextmanager
def forced_implementation(layers, implementation):
    """Sets every layer's `implementation` for the duration; always restores it."""
    saved = [(layer, layer.implementation) for layer in layers]
    try:
        for layer in layers:
            layer.implementation = implementation
        yield
    finally:
        for layer, value in saved:
            layer.implementation = value


def _to_tensor_spec(spec):
    if isinstance(spec, tf.TypeSpec):
        return spec
    shape = getattr(spec, "shape", None)
    dtype = getattr(spec, "dtype", None)
    if dtype is None:
        raise ValueError(f"signature entries must be tf.TensorSpec, keras.InputSpec or "
                         f"Keras inputs with a dtype, got {spec!r}")
    return tf.TensorSpec(shape, tf.as_dtype(dtype), name=getattr(spec, "name", None))


def input_specs(model, signature):
    """The serving function's positional argument specs (a list)."""
    if signature is not None:
        if not isinstance(signature, (list, tuple)):
            signature = [signature]
        return [tf.nest.map_structure(_to_tensor_spec, arg) for arg in signature]
    if is_keras3(model):
        # pylint: disable-next=g-import-not-at-top
        from keras.src.export.export_utils import get_input_signature

        if not _is_keras3_graph_model(model):
            raise ValueError(
                f"cannot infer the inputs of the subclassed model {model.name!r}: Keras "
                "records only their shapes (as float32), not the dtypes of ids. Pass "
                "signature=, e.g. [tf.TensorSpec([None, 4], tf.int64, name='ids')].")
        try:
            specs = get_input_signature(model)
        except ValueError as e:
            raise ValueError(
                f"cannot export model {model.name!r}: it has never been called, so its "
                "inputs are unknown. Call it on a batch (or build it from keras.Input) "
                f"before exporting, or pass signature=. ({e})") from e
        return [tf.nest.map_structure(_to_tensor_spec, arg) for arg in specs]
    save_spec = model.save_spec(dynamic_batch=True)
    if save_spec is not None:
        args, _ = save_spec
        return list(args)
    inputs = getattr(model, "_nested_inputs", None)
    if inputs is None:
        raise ValueError(
            f"cannot export model {model.name!r}: it has never been called, so its "
            "inputs are unknown. Call it on a batch before exporting, or pass signature=.")
    return [tf.nest.map_structure(lambda t: tf.TensorSpec(
        [None] + list(t.shape[1:]), t.dtype, name=t.name.split(":")[0]), inputs)]


def check_built(model):
    if not getattr(model, "built", False):
        raise ValueError(
            f"cannot export model {getattr(model, 'name', model)!r}: it has not been "
            "built. Call it on a batch of inputs (or build it from keras.Input) before "
            "exporting.")
    for layer in memrec_layers(model):
        if not layer.built:
            raise ValueError(
                f"cannot export model {model.name!r}: its MemRecEmbedding layer "
                f"{layer.name!r} has not been built. Call the model on a batch first.")


def _serving_fn(model, specs):
    """Calls the model in inference mode after checking each dense input's shape.

    The signature functions of a loaded SavedModel check dtypes but not
    shapes; tf.ensure_shape turns a request of the wrong rank or width into
    an InvalidArgumentError that names the expected shape, instead of an
    error deep inside the model.
    """
    def check(value, spec):
        if isinstance(spec, tf.TensorSpec) and spec.shape.rank is not None:
            return tf.ensure_shape(value, spec.shape)
        return value

    def serve(*args):
        args = tf.nest.map_structure(check, list(args), list(specs))
        return model(*args, training=False)

    return serve


def _write_keras3(model, path, specs, only_used_variables):
    import keras  # pylint: disable=g-import-not-at-top

    archive = keras.export.ExportArchive()
    if only_used_variables:
        # The archive collects what the endpoint reads (variables and Keras'
        # lookup tables) by itself; tracking the model would add every
        # variable, the float32 tables that stored ones replace included.
        pass
    elif _is_keras3_graph_model(model):
        archive.track(model)
    else:
        # Tracking a subclassed Model makes the SavedModel walk evaluate its
        # `_default_save_signature`, which traces the model on float32 inputs
        # of its build shapes: that fails for integer or string ids. Its
        # layers carry the same resources (variables are collected from the
        # endpoint anyway).
        # pylint: disable-next=protected-access
        children = model._flatten_layers(include_self=False, recursive=False)
        for layer in children:
            archive.track(layer)
    archive.add_endpoint("serve", _serving_fn(model, specs), specs)
    archive.write_out(path, options=_save_options(only_used_variables), verbose=False)


def _write_tf_keras(model, path, specs, only_used_variables):
    serve = _serving_fn(model, specs)

    def named_outputs(*args):
        outputs = serve(*args)
        if isinstance(outputs, dict):
            return outputs
        flat = tf.nest.flatten(outputs)
        return {f"output_{i}": t for i, t in enumerate(flat)}

    function = tf.function(named_outputs, input_signature=specs, autograph=False)
    concrete = function.get_concrete_function()
    root = model
    if only_used_variables:
        # A module holding just the variables the serving function reads.
        root = tf.Module()
        root.variables_read = list(concrete.variables)
        root.serve = function
    tf.saved_model.save(root, path, signatures={SIGNATURE_KEY: concrete},
                        options=_save_options(only_used_variables))


def _save_options(stored_tables):
    """Stored (serving) tables refuse gradients with an error naming the fix;
    their exports are for inference, so custom gradients are not traced."""
    if not stored_tables:
        return None
    return tf.saved_model.SaveOptions(experimental_custom_gradients=False)


def write_saved_model(model, path, specs, only_used_variables=False):
    """Writes `model`'s serving graph; with `only_used_variables`, only the
    variables that graph reads (not every variable the model tracks)."""
    if is_keras3(model):
        _write_keras3(model, path, specs, only_used_variables)
    else:
        _write_tf_keras(model, path, specs, only_used_variables)
