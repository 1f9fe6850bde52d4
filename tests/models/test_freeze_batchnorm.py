"""Tests of `bn_keras.freeze_batchnorm`."""

import re

import keras
import numpy as np
import pytest

import bn_keras
from tests.layer_test_case import sample_inputs
from tests.layer_test_case import to_numpy


def _model():
    inner = keras.Sequential(
        [keras.Input((4,)), keras.layers.BatchNormalization(name="keras_bn")],
        name="inner",
    )
    inputs = keras.Input((4,))
    h = keras.layers.Dense(4, name="d")(inputs)
    h = bn_keras.layers.GhostBatchNormalization(
        virtual_batch_size=8, name="ghost"
    )(h)
    h = inner(h)
    h = bn_keras.layers.BNBlock(
        keras.layers.Dense(4, name="bd"), activation="relu", name="block"
    )(h)
    outputs = keras.layers.Dense(1, name="o")(h)
    return keras.Model(inputs, outputs)


def _state(layers):
    return [[to_numpy(w) for w in layer.weights] for layer in layers]


def _fit(model, x):
    model.compile(keras.optimizers.SGD(0.1), "mse")
    model.fit(x, x[:, :1] * 3.0, batch_size=16, epochs=1, verbose=0)


def test_frozen_bn_layers_run_in_inference_mode_and_do_not_change():
    model = _model()
    layers = bn_keras.freeze_batchnorm(model)
    assert [layer.name for layer in layers] == [
        "ghost",
        "keras_bn",
        layers[2].name,
    ]
    assert layers[2] is model.get_layer("block").normalization
    assert all(layer.trainable is False for layer in layers)
    assert model.get_layer("d").trainable and model.get_layer("o").trainable
    assert model.get_layer("block").layer.trainable

    x = sample_inputs((32, 4), shift=3.0)
    # Inference mode even when called with training=True.
    np.testing.assert_array_equal(
        to_numpy(model(x, training=True)), to_numpy(model(x, training=False))
    )
    before = _state(layers)
    dense_before = to_numpy(model.get_layer("d").kernel)
    _fit(model, x)
    for old, new in zip(before, _state(layers)):
        for a, b in zip(old, new):
            np.testing.assert_array_equal(a, b)
    assert not np.allclose(to_numpy(model.get_layer("d").kernel), dense_before)


def test_unfreeze_restores_training_mode():
    model = _model()
    bn_keras.freeze_batchnorm(model)
    layers = bn_keras.freeze_batchnorm(model, frozen=False)
    assert all(layer.trainable for layer in layers)
    x = sample_inputs((32, 4), shift=3.0)
    assert not np.allclose(
        to_numpy(model(x, training=True)), to_numpy(model(x, training=False))
    )
    before = _state(layers)
    _fit(model, x)
    for old, new in zip(before, _state(layers)):
        # gamma, beta and the moving statistics all move (the inputs of
        # the later BN layers are normalized already, so only a little)
        assert all(not np.array_equal(a, b) for a, b in zip(old, new))


def test_model_without_bn():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    assert bn_keras.freeze_batchnorm(model) == []
    assert model.layers[0].trainable


def test_frozen_must_be_a_boolean():
    with pytest.raises(TypeError, match=re.escape("Received: frozen='no'")):
        bn_keras.freeze_batchnorm(_model(), frozen="no")
