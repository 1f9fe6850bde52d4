"""Put the batch normalization layers of a model in inference mode."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bn_keras._validation import check_bool
from bn_keras.models.find_batchnorm import find_batchnorm

if TYPE_CHECKING:
    import keras


def freeze_batchnorm(
    model: keras.layers.Layer, frozen: bool = True
) -> list[keras.layers.Layer]:
    """Puts every BN layer of `model` in inference mode, or back.

    Fine-tuning a pretrained model on a small dataset goes better when its
    batch normalization layers keep the statistics learned in pretraining
    (keras#9965): `freeze_batchnorm(model)` sets `trainable=False` on every
    BN layer that `bn_keras.find_batchnorm` finds (Keras's and bn-keras's,
    nested ones included). In Keras 3 a BN layer with `trainable=False`
    runs in inference mode, even in `fit()`: it normalizes with its moving
    statistics, does not update them, and its `gamma` and `beta` are not
    trained. The other layers are left as they are.
    `freeze_batchnorm(model, frozen=False)` makes the BN layers trainable
    again, back in training mode during `fit()`.

    The model is changed in place. As for any change of `trainable`, call
    `model.compile()` afterwards (again) for `fit()` to take it into
    account.

    Args:
        model: A Keras model or layer (subclassed models included: the BN
            layers are found through their tracked sub-layers).
        frozen: If `True`, put the BN layers in inference mode; if `False`,
            make them trainable again. Defaults to `True`.

    Returns:
        The list of BN layers that were set, in forward order.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((4,)),
    ...     keras.layers.Dense(8),
    ...     bn_keras.layers.BatchNormalization(),
    ... ])
    >>> layers = bn_keras.freeze_batchnorm(model)
    >>> [layer.trainable for layer in layers]
    [False]
    >>> model.layers[0].trainable
    True
    """
    frozen = check_bool("frozen", frozen)
    layers = find_batchnorm(model)
    for layer in layers:
        layer.trainable = not frozen
    return layers
