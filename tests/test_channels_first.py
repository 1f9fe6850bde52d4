"""`bn_keras._channels_first`: TensorFlow's refusal of channels-first
convolutions on its CPU kernels, recognized and explained."""

import keras
import pytest

from bn_keras._channels_first import channels_first_layers
from bn_keras._channels_first import channels_first_message
from bn_keras._channels_first import is_channels_first_error

#: What TensorFlow 2.21 raises for a channels-first Conv2D on its CPU
#: kernels (oneDNN off).
TF_MESSAGE = (
    "The Conv2D op currently only supports the NHWC tensor format on the "
    "CPU. The op was given the format: NCHW"
)


def _model(data_format="channels_first"):
    """Conv, BN and a nested Sequential (conv, pooling), in `data_format`."""

    def shape(channels):
        if data_format == "channels_first":
            return (channels, 6, 6)
        return (6, 6, channels)

    inner = keras.Sequential(
        [
            keras.Input(shape(4)),
            keras.layers.Conv2D(4, 1, data_format=data_format, name="c2"),
            keras.layers.MaxPooling2D(data_format=data_format, name="pool"),
        ],
        name="inner",
    )
    inputs = keras.Input(shape(3))
    h = keras.layers.Conv2D(
        4, 3, padding="same", data_format=data_format, name="c1"
    )(inputs)
    axis = 1 if data_format == "channels_first" else -1
    h = keras.layers.BatchNormalization(axis=axis, name="bn")(h)
    return keras.Model(inputs, inner(h))


def test_channels_first_layers_nested_included():
    assert channels_first_layers(_model()) == ["c1", "inner/c2", "inner/pool"]
    assert channels_first_layers(_model("channels_last")) == []


def test_message_names_the_layers_and_the_ways_out():
    message = channels_first_message(_model())
    assert message.startswith(
        "the model has channels-first layers ('c1', 'inner/c2', "
        "'inner/pool'), and TensorFlow runs channels-first convolutions on a "
        "GPU, or on the CPU only through oneDNN"
    )
    assert "TF_ENABLE_ONEDNN_OPTS=1" in message
    assert "KERAS_BACKEND=jax" in message


@pytest.mark.tensorflow_only
def test_tensorflow_refusal_is_recognized():
    import tensorflow as tf

    refusal = tf.errors.UnimplementedError(None, None, TF_MESSAGE)
    assert is_channels_first_error(refusal, _model())
    # Not for a channels-last model, nor for another error.
    assert not is_channels_first_error(refusal, _model("channels_last"))
    other = tf.errors.UnimplementedError(None, None, "no kernel for int8")
    assert not is_channels_first_error(other, _model())
    assert not is_channels_first_error(ValueError(TF_MESSAGE), _model())
