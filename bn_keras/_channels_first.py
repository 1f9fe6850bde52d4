"""Channels-first convolutions on TensorFlow's CPU kernels, explained.

TensorFlow runs a channels-first (`data_format="channels_first"`, NCHW)
`Conv1D`, `Conv2D` or transposed convolution on a GPU, and on the CPU only
through oneDNN: its own CPU kernels take channels-last (NHWC) inputs only,
and raise `UnimplementedError` ("The Conv2D op currently only supports the
NHWC tensor format on the CPU") or `InvalidArgumentError` ("... only
supports NHWC") otherwise. oneDNN is on by default on recent x86 CPUs
(AVX-512 VNNI, AMX) and off elsewhere unless `TF_ENABLE_ONEDNN_OPTS=1` is
set before TensorFlow starts. Code of bn-keras that runs a user's model
turns that error into one that names the limit (`is_channels_first_error`,
`channels_first_message`).
"""

import keras

#: How many layer names the message shows.
_SHOWN = 3


def channels_first_layers(model):
    """Paths of the layers of `model` (nested models and blocks included)
    with `data_format="channels_first"`, in `model.layers` order.

    >>> model = keras.Sequential([
    ...     keras.Input((3, 8, 8)),
    ...     keras.layers.Conv2D(4, 3, data_format="channels_first", name="c"),
    ... ])
    >>> bn_keras._channels_first.channels_first_layers(model)
    ['c']
    """
    found = []
    for layer in getattr(model, "layers", ()):
        if getattr(layer, "data_format", None) == "channels_first":
            found.append(layer.name)
        found.extend(
            f"{layer.name}/{path}" for path in channels_first_layers(layer)
        )
    return found


def is_channels_first_error(error, model):
    """Whether `error`, raised while running `model`, is TensorFlow's
    refusal of a channels-first convolution on its CPU kernels."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return (
        isinstance(error, tf.errors.OpError)
        and "NHWC" in str(error)
        and bool(channels_first_layers(model))
    )


def channels_first_message(model):
    """What stops the model and what to do, in one sentence."""
    names = channels_first_layers(model)
    shown = ", ".join(f"'{name}'" for name in names[:_SHOWN])
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return (
        f"the model has channels-first layers ({shown}{more}), and "
        "TensorFlow runs channels-first convolutions on a GPU, or on the CPU "
        "only through oneDNN, which is off in this process: set "
        "TF_ENABLE_ONEDNN_OPTS=1 before TensorFlow starts, use a GPU, or use "
        "the JAX or PyTorch backend (KERAS_BACKEND=jax)"
    )
