"""Tests of `bn_keras.find_batchnorm`."""

import keras

import bn_keras


def _names(layers):
    return [layer.name for layer in layers]


def test_sequential_model_in_forward_order():
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(4),
            bn_keras.layers.BatchNormalization(name="first"),
            keras.layers.Dense(4),
            keras.layers.BatchNormalization(name="second"),  # Keras's own
            keras.layers.LayerNormalization(name="not_bn"),
            bn_keras.layers.BatchRenormalization(name="third"),
        ]
    )
    found = bn_keras.find_batchnorm(model)
    assert _names(found) == ["first", "second", "third"]
    assert found[1].__class__ is keras.layers.BatchNormalization


def test_nested_models_blocks_and_branches():
    inner = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(4),
            keras.layers.BatchNormalization(name="inner_bn"),
        ],
        name="inner",
    )
    inputs = keras.Input((4,))
    a = bn_keras.layers.BatchNormalization(name="input_bn")(inputs)
    b = inner(a)
    block = bn_keras.layers.BNBlock(
        keras.layers.Dense(4),
        placement="bn-act-layer",
        normalization={"name": "block_bn"},
        name="block",
    )
    c = block(b)
    d = bn_keras.layers.GhostBatchNormalization(name="branch_bn")(a)
    outputs = keras.layers.Add()([c, d])
    model = keras.Model(inputs, outputs)
    found = _names(bn_keras.find_batchnorm(model))
    assert sorted(found) == ["block_bn", "branch_bn", "inner_bn", "input_bn"]
    # Forward order: every BN comes after the BN layers that feed it.
    assert found[0] == "input_bn"
    assert found.index("inner_bn") < found.index("block_bn")


def test_shared_layer_is_listed_once():
    bn = bn_keras.layers.BatchNormalization(name="shared")
    inputs = keras.Input((4,))
    model = keras.Model(
        inputs, keras.layers.Add()([bn(inputs), bn(bn(inputs))])
    )
    assert _names(bn_keras.find_batchnorm(model)) == ["shared"]


def test_subclassed_model_tracked_layers():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)
            self.norm = bn_keras.layers.BatchNormalization(name="net_bn")

        def call(self, x):
            return self.norm(self.dense(x))

    assert _names(bn_keras.find_batchnorm(Net())) == ["net_bn"]


def test_layer_and_model_without_bn():
    bn = keras.layers.BatchNormalization()
    assert bn_keras.find_batchnorm(bn) == [bn]
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    assert bn_keras.find_batchnorm(model) == []
