"""What kind of layer a layer is, as batch normalization sees it.

The Dense and convolution layers that BN goes around, the stand-alone
activation layers, whether an activation is the identity, and which axis
holds a layer's features. `BNBlock`, the graph rewrites in `models/`
(`models/_graph.py` imports these rather than keeping copies) and
`bn-keras inspect` all ask these questions, and must answer them alike.

This module lives in `layers/`, not beside the layer graph in `models/`,
because of the package's import stack (cli -> tuner -> callbacks -> models
-> registry -> layers -> _names): `BNBlock` needs `is_linear_activation`
and `channel_axis`, and `models/fold_batchnorm.py` imports `BNBlock`, so a
module in `layers/` that imported `models/` would make a cycle. It imports
nothing from bn_keras.
"""

import keras

#: The Dense and convolution layers that BN is inserted around by default.
DENSE_CONV_LAYERS = (
    keras.layers.Dense,
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
    keras.layers.SeparableConv1D,
    keras.layers.SeparableConv2D,
    keras.layers.DepthwiseConv1D,
    keras.layers.DepthwiseConv2D,
)

#: Stand-alone activation layers (`layer-act-bn` puts BN after them).
ACTIVATION_LAYERS = (
    keras.layers.Activation,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.ELU,
    keras.layers.PReLU,
    keras.layers.Softmax,
)


def is_linear_activation(activation):
    """Whether an activation is the identity.

    Args:
        activation: An activation function, its name, its serialized
            config (a layer's `get_config()["activation"]`), or `None`.

    >>> bn_keras.layers._layer_kinds.is_linear_activation("linear")
    True
    >>> bn_keras.layers._layer_kinds.is_linear_activation(
    ...     keras.activations.relu)
    False
    """
    if activation is None:
        return True
    if isinstance(activation, str):
        return activation == "linear"
    if isinstance(activation, dict):
        return activation.get("config") == "linear"
    return activation is keras.activations.linear


def is_linear(layer):
    """Whether a layer has no activation of its own (or the identity)."""
    return is_linear_activation(getattr(layer, "activation", None))


def channel_axis(layer):
    """The features axis of the layer's inputs and outputs: 1 or -1."""
    return 1 if getattr(layer, "data_format", None) == "channels_first" else -1
