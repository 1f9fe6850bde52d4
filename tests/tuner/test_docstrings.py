"""The `>>>` examples in the docstrings of bn_keras.tuner run as shown."""

import doctest
import importlib

import keras
import keras_tuner
import numpy as np
import pytest

import bn_keras
import bn_keras.tuner

MODULES = [
    "bn_keras.tuner.bn_hyperparameters",
    "bn_keras.tuner.bn_placement_hypermodel",
    "bn_keras.tuner.bn_search_mlp",
    "bn_keras.tuner.bn_search_cnn",
    "bn_keras.tuner.get_tuner",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    globs = {
        "bn_keras": bn_keras,
        "keras": keras,
        "keras_tuner": keras_tuner,
        "np": np,
    }
    results = doctest.testmod(
        module,
        globs=globs,
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
    )
    assert results.attempted > 0
    assert results.failed == 0
