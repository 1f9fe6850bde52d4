"""Find the batch normalization layers of a model."""

import keras


def _children(layer):
    """Sub-layers of `layer` in forward order (models, BNBlock, wrappers)."""
    if isinstance(layer, keras.Model) or hasattr(layer, "layers"):
        return list(getattr(layer, "layers", []) or [])
    if isinstance(layer, keras.layers.Wrapper):
        return [layer.layer]
    return []


def find_batchnorm(model):
    """Returns every batch normalization layer of `model`, in forward order.

    Finds `keras.layers.BatchNormalization` layers and bn-keras's (which
    subclass it), including those nested in sub-models, `Sequential` blocks
    and `bn_keras.layers.BNBlock`s. A layer shared by several parts of the
    model is listed once.

    Args:
        model: A Keras model or layer.

    Returns:
        A list of layers.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((4,)),
    ...     keras.layers.Dense(8),
    ...     bn_keras.layers.BatchNormalization(),
    ... ])
    >>> [type(layer).__name__ for layer in bn_keras.find_batchnorm(model)]
    ['BatchNormalization']
    """
    found, seen = [], set()

    def visit(layer):
        if id(layer) in seen:
            return
        seen.add(id(layer))
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
            return
        for child in _children(layer):
            visit(child)

    if isinstance(model, keras.layers.BatchNormalization):
        return [model]
    for child in _children(model):
        visit(child)
    return found
