"""Shared pytest setup: a clean Keras session and fixed seeds per test,
and `channels_first`, for tests of channels-first convolutions."""

import functools
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

if keras.backend.backend() == "torch":
    import torch

    # Past its recompilation limit torch.compile runs a function eagerly,
    # with a mere warning: a `jit_compile=True` test would then test eager
    # mode. Fail instead.
    torch._dynamo.config.fail_on_recompile_limit_hit = True


@pytest.fixture(autouse=True)
def _clean_keras_session():
    # free_memory=False: a gc.collect() per test costs 0.3-0.7 s each.
    keras.utils.clear_session(free_memory=False)
    keras.utils.set_random_seed(1234)
    keras.config.set_dtype_policy("float32")
    if keras.backend.backend() == "torch":
        import torch

        # Each test compiles its own functions: no recompilation limit
        # carried over from earlier tests (and their memory freed).
        torch.compiler.reset()
    yield
    keras.config.set_dtype_policy("float32")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def pytest_collection_modifyitems(config, items):
    """Tests marked `tensorflow_only` are skipped on other backends."""
    if keras.backend.backend() == "tensorflow":
        return
    skip = pytest.mark.skip(reason="needs the TensorFlow backend")
    for item in items:
        if "tensorflow_only" in item.keywords:
            item.add_marker(skip)


# -- channels-first convolutions ----------------------------------------------


@functools.cache
def channels_first_convolutions_run():
    """Whether this backend runs a channels-first `Conv2D` on this machine.

    TensorFlow's CPU kernels take channels-last inputs only; it runs
    channels-first convolutions on a GPU or through oneDNN (on by default
    on recent x86 CPUs, off with `TF_ENABLE_ONEDNN_OPTS=0`). Probed once,
    with a 1x1 convolution of a 2x2 image.
    """
    conv = keras.layers.Conv2D(  # named, constant: no name or seed used up
        1,
        1,
        data_format="channels_first",
        kernel_initializer="ones",
        name="channels_first_probe",
    )
    try:
        conv(np.ones((1, 1, 2, 2), "float32"))
    except Exception as error:  # TensorFlow's UnimplementedError
        if keras.backend.backend() == "tensorflow" and "NHWC" in str(error):
            return False
        raise
    return True


def _channels_last_layer(layer):
    """A copy of `layer` for `channels_last_twin`."""
    if isinstance(layer, keras.layers.Flatten):
        raise ValueError(
            "channels_last_twin: a Flatten orders features by format; the "
            f"twin would not compute the same function. Received: {layer.name}"
        )
    config = layer.get_config()
    if config.get("data_format") == "channels_first":
        config["data_format"] = "channels_last"
    if isinstance(layer, keras.layers.BatchNormalization):
        rank = len(layer.input.shape)
        if rank > 2 and config["axis"] % rank == 1:
            config["axis"] = -1
    return type(layer).from_config(config)


def channels_last_twin(model):
    """A channels-last copy of a channels-first model, with its weights.

    Its layers take `data_format="channels_last"` and its BN layers the
    last axis where the model's take axis 1; kernels have the same shape
    in both formats. So `twin(moveaxis(x, 1, -1))` is `model(x)` with the
    channels axis moved last, computed without channels-first kernels.
    """
    # A Sequential model takes one input; a Functional one its structure.
    inputs = model.inputs[0] if isinstance(model, keras.Sequential) else (
        model.input
    )
    twin = keras.models.clone_model(
        model,
        input_tensors=keras.tree.map_structure(
            lambda x: keras.Input((*x.shape[2:], x.shape[1])), inputs
        ),
        clone_function=_channels_last_layer,
    )
    twin.set_weights(model.get_weights())
    return twin


class ChannelsFirst:
    """Runs channels-first models here, as they are where this machine and
    backend can (`supported`), elsewhere as their channels-last twin
    (`channels_last_twin`): the test checks the same outputs either way."""

    def __init__(self, supported):
        self.supported = supported

    def run(self, model, x, training=False):
        """`model(x)` as a NumPy array, run by the model or its twin."""
        if self.supported:
            return keras.ops.convert_to_numpy(model(x, training=training))
        return self.run_twin(model, x, training)

    @staticmethod
    def run_twin(model, x, training=False):
        """`model(x)` computed by the channels-last twin."""
        twin = channels_last_twin(model)
        y = keras.ops.convert_to_numpy(
            twin(np.moveaxis(x, 1, -1), training=training)
        )
        return np.moveaxis(y, -1, 1) if y.ndim > 2 else y


@pytest.fixture
def channels_first():
    """A `ChannelsFirst` for this machine (probed once per session)."""
    return ChannelsFirst(channels_first_convolutions_run())
