"""A normalization layer from a specification: a name, a dict or a layer.

What `bn_keras.registry.get_normalization` does, kept in the layers'
room: `BNBlock` resolves its `normalization` argument here, since a layer
may not import the registry (which builds layers, and so sits above
them). The names come from `bn_keras._names`, which imports nothing.
"""

import keras

from bn_keras._names import NORMALIZATIONS
from bn_keras._names import get_normalization_name
from bn_keras._names import normalization_names
from bn_keras.layers.batch_normalization import BatchNormalization
from bn_keras.layers.batch_renormalization import BatchRenormalization
from bn_keras.layers.ghost_batch_normalization import GhostBatchNormalization

_CLASSES = {
    cls.__name__: cls
    for cls in (
        BatchNormalization,
        BatchRenormalization,
        GhostBatchNormalization,
    )
}


def normalization_class(name):
    """The `bn_keras.layers` class of a registered normalization name.

    >>> bn_keras.layers._normalization_spec.normalization_class("Ghost")
    <class 'bn_keras.layers.ghost_batch_normalization.GhostBatchNormalization'>
    """
    return _CLASSES[NORMALIZATIONS[get_normalization_name(name)]]


def normalization_layer(normalization=None, **defaults):
    """A fresh normalization layer; see `bn_keras.registry.get_normalization`
    for the forms of `normalization` and `defaults`."""
    if normalization is None:
        return BatchNormalization(**defaults)
    if isinstance(normalization, str):
        return normalization_class(normalization)(**defaults)
    if isinstance(normalization, dict):
        if "class_name" in normalization:
            layer = keras.saving.deserialize_keras_object(normalization)
            if not isinstance(layer, keras.layers.Layer):
                raise TypeError(
                    "A serialized `normalization` must describe a layer. "
                    f"Received: normalization={normalization!r}"
                )
            return layer
        return BatchNormalization(**{**defaults, **normalization})
    if isinstance(normalization, keras.layers.Layer):
        config = normalization.get_config()
        config.pop("name", None)  # a fresh layer gets a fresh name
        return type(normalization).from_config({**defaults, **config})
    raise TypeError(
        "Argument `normalization` must be None, one of "
        f"{normalization_names()}, a dict of BatchNormalization arguments, "
        f"or a layer instance. Received: normalization={normalization!r}"
    )


def serialize_normalization(layer):
    """The JSON-serializable form of a normalization layer (or `None`)."""
    if layer is None:
        return None
    return keras.saving.serialize_keras_object(layer)
