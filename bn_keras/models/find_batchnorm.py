"""Find the batch normalization layers of a model."""

from __future__ import annotations

import keras


def _children(layer):
    """Sub-layers of `layer` in forward order (models, BNBlock, wrappers)."""
    if isinstance(layer, keras.Model) or hasattr(layer, "layers"):
        return list(getattr(layer, "layers", []) or [])
    if isinstance(layer, keras.layers.Wrapper):
        return [layer.layer]
    return []


def find_batchnorm(
    model: keras.layers.Layer,
) -> list[keras.layers.BatchNormalization]:
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
    return [layer for layer, _ in batchnorm_parents(model)]


def batchnorm_parents(model):
    """Every batch normalization layer of `model` with the layers it sits in.

    The layers and order of `find_batchnorm`, each with the tuple of layers
    (sub-models, `Sequential` blocks, `BNBlock`s, wrappers) between `model`
    and it, outermost first: `()` for a layer of `model` itself. A shared
    layer is listed once, with the containers it was first found in.

    Returns:
        A list of `(layer, parents)` pairs.
    """
    found, seen = [], set()

    def visit(layer, parents):
        if id(layer) in seen:
            return
        seen.add(id(layer))
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append((layer, parents))
            return
        for child in _children(layer):
            visit(child, (*parents, layer))

    if isinstance(model, keras.layers.BatchNormalization):
        return [(model, ())]
    for child in _children(model):
        visit(child, ())
    return found
