"""Tests of the layer graph that the model rewrites share."""

import keras
import pytest

from bn_keras.models._graph import output_layers


def _names(layers):
    return [layer.name for layer in layers]


def test_output_layers_of_a_sequential_model():
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8, name="hidden"),
            keras.layers.ReLU(name="relu"),
            keras.layers.Dense(1, name="out"),
            keras.layers.Activation("sigmoid", name="prob"),
        ]
    )
    assert _names(output_layers(model)) == ["out", "prob"]


def test_output_layers_of_a_two_headed_functional_model():
    inputs = keras.Input((6,), name="x")
    trunk = keras.layers.Dense(8, name="trunk")(inputs)
    relu = keras.layers.ReLU(name="relu")(trunk)
    # A model output that also feeds a Dense layer is not an output layer.
    head = keras.layers.Dense(3, name="head")(relu)
    soft = keras.layers.Softmax(name="soft")(head)
    skip = keras.layers.Dense(2, name="skip")(inputs)
    both = keras.layers.Concatenate(name="cat")([relu, skip])
    model = keras.Model(inputs, [soft, relu, both])
    # In the order of `model.layers`; `trunk` and `relu` feed `head`.
    assert _names(output_layers(model)) == ["head", "skip", "soft", "cat"]


def test_output_layers_inside_nested_models():
    def inner(name):
        return keras.Sequential(
            [
                keras.Input((4,)),
                keras.layers.Dense(4, name=f"{name}_a"),
                keras.layers.Dense(4, name=f"{name}_b"),
                keras.layers.ReLU(name=f"{name}_relu"),
            ],
            name=name,
        )

    inputs = keras.Input((4,))
    first = keras.layers.Dense(4, name="first")(inputs)
    # `first` is followed by `body`, which contains Dense layers.
    body = inner("body")(first)
    outputs = inner("tail")(body)
    model = keras.Model(inputs, outputs)
    # Nothing inside `body` is an output layer: `tail` follows it.
    assert _names(output_layers(model)) == ["tail", "tail_b", "tail_relu"]


def test_output_layers_of_a_subclassed_model_names_the_caller():
    class Net(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(TypeError, match="^`insert_batchnorm` rewrites"):
        output_layers(Net(name="net"), "insert_batchnorm")
