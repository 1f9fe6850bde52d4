"""Shared pytest setup: a clean Keras session and fixed seeds per test."""

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
