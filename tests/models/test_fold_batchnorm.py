"""Tests of `bn_keras.fold_batchnorm`."""

import logging
import os
import re

import keras
import numpy as np
import pytest

import bn_keras
from tests.layer_test_case import randomize_weights
from tests.layer_test_case import sample_inputs
from tests.layer_test_case import to_numpy

TOLERANCE = 1e-4


def _random_bn(model, seed=0):
    """Non-trivial gamma, beta and moving statistics in every BN."""
    for i, layer in enumerate(bn_keras.find_batchnorm(model)):
        randomize_weights(layer, seed=seed + i)


def _assert_same_predictions(folded, model, x):
    np.testing.assert_allclose(
        folded.predict(x, verbose=0),
        model.predict(x, verbose=0),
        rtol=TOLERANCE,
        atol=TOLERANCE,
    )


LAYERS = {
    "dense": (lambda b: keras.layers.Dense(5, use_bias=b), (6,)),
    "dense_3d": (lambda b: keras.layers.Dense(5, use_bias=b), (4, 6)),
    "conv1d": (lambda b: keras.layers.Conv1D(5, 3, use_bias=b), (8, 3)),
    "conv2d": (lambda b: keras.layers.Conv2D(5, 3, use_bias=b), (6, 6, 3)),
    "conv3d": (lambda b: keras.layers.Conv3D(4, 2, use_bias=b), (4, 4, 4, 2)),
    "conv2d_strided_grouped": (
        lambda b: keras.layers.Conv2D(4, 3, strides=2, groups=2, use_bias=b),
        (7, 7, 4),
    ),
    "conv2d_transpose": (
        lambda b: keras.layers.Conv2DTranspose(5, 3, use_bias=b),
        (5, 5, 3),
    ),
    "conv1d_transpose": (
        lambda b: keras.layers.Conv1DTranspose(5, 3, use_bias=b),
        (5, 3),
    ),
    "separable_conv2d": (
        lambda b: keras.layers.SeparableConv2D(
            5, 3, depth_multiplier=2, use_bias=b
        ),
        (6, 6, 3),
    ),
    "separable_conv1d": (
        lambda b: keras.layers.SeparableConv1D(5, 3, use_bias=b),
        (8, 3),
    ),
    "depthwise_conv2d": (
        lambda b: keras.layers.DepthwiseConv2D(
            3, depth_multiplier=2, use_bias=b
        ),
        (6, 6, 3),
    ),
    "depthwise_conv1d": (
        lambda b: keras.layers.DepthwiseConv1D(
            3, depth_multiplier=3, use_bias=b
        ),
        (8, 2),
    ),
}

NORMALIZATIONS = {
    "ours": lambda: bn_keras.layers.BatchNormalization(name="bn"),
    "keras": lambda: keras.layers.BatchNormalization(name="bn"),
    "renorm": lambda: bn_keras.layers.BatchRenormalization(name="bn"),
    "no_center": lambda: bn_keras.layers.BatchNormalization(
        center=False, name="bn"
    ),
    "no_scale": lambda: keras.layers.BatchNormalization(scale=False, name="bn"),
}


@pytest.mark.parametrize("use_bias", [False, True])
@pytest.mark.parametrize("kind", list(LAYERS))
def test_fold_each_layer_type(kind, use_bias):
    make_layer, shape = LAYERS[kind]
    layer = make_layer(use_bias)
    model = keras.Sequential(
        [
            keras.Input(shape),
            layer,
            bn_keras.layers.BatchNormalization(name="bn"),
            keras.layers.ReLU(name="relu"),
        ]
    )
    _random_bn(model)
    if use_bias:  # a non-zero bias must be folded too
        weights = layer.get_weights()
        weights[-1] = np.linspace(-1, 1, weights[-1].size).astype("float32")
        layer.set_weights(weights)
    folded, report = bn_keras.fold_batchnorm(model, return_report=True)
    assert report == {
        "folded": [{"layer": layer.name, "batchnorm": "bn"}],
        "kept": [],
    }
    assert [type(x).__name__ for x in folded.layers] == [
        type(layer).__name__,
        "ReLU",
    ]
    assert folded.layers[0].use_bias is True
    _assert_same_predictions(folded, model, sample_inputs((4, *shape)))


@pytest.mark.parametrize("normalization", list(NORMALIZATIONS))
def test_fold_each_normalization(normalization):
    model = keras.Sequential(
        [
            keras.Input((6, 6, 3)),
            keras.layers.Conv2D(4, 3, name="conv"),
            NORMALIZATIONS[normalization](),
        ]
    )
    _random_bn(model, seed=3)
    x = sample_inputs((4, 6, 6, 3))
    if normalization == "renorm":  # moving statistics from training
        model.layers[-1](to_numpy(model.layers[0](x)), training=True)
    folded = bn_keras.fold_batchnorm(model)
    assert [layer.name for layer in folded.layers] == ["conv"]
    _assert_same_predictions(folded, model, x)


def _conv_bn_channels_first(model, x):
    """A channels-first 3x3 convolution (valid, stride 1) and BN in
    inference, written out in NumPy from the model's weights."""
    conv, bn = model.layers
    kernel, bias = (to_numpy(w).astype("float64") for w in conv.weights)
    height, width = x.shape[2] - 2, x.shape[3] - 2
    windows = (
        (x[:, :, i : i + height, j : j + width], kernel[i, j])
        for i in range(3)
        for j in range(3)
    )
    y = sum(np.einsum("nchw,co->nohw", *window) for window in windows)
    y = y + bias[:, None, None]
    w = {v.name: to_numpy(v)[:, None, None] for v in bn.weights}
    normalized = (y - w["moving_mean"]) / np.sqrt(
        w["moving_variance"] + bn.epsilon
    )
    return normalized * w["gamma"] + w["beta"]


def test_fold_channels_first_convolution(channels_first):
    # Run by the models where this machine runs channels-first
    # convolutions, else by their channels-last twins. Images 6x7: with as
    # many columns as filters, Keras 3.15's TensorFlow `ops.add` adds a
    # channels-first bias along the last axis in eager calls.
    model = keras.Sequential(
        [
            keras.Input((3, 6, 7)),
            keras.layers.Conv2D(4, 3, data_format="channels_first", name="c"),
            bn_keras.layers.BatchNormalization(axis=1, name="bn"),
        ]
    )
    _random_bn(model)
    folded = bn_keras.fold_batchnorm(model)
    assert [layer.name for layer in folded.layers] == ["c"]
    x = sample_inputs((2, 3, 6, 7))
    expected = _conv_bn_channels_first(model, x.astype("float64"))
    for run in (folded, model):
        np.testing.assert_allclose(
            channels_first.run(run, x),
            expected,
            rtol=TOLERANCE,
            atol=TOLERANCE,
        )
    if channels_first.supported:  # the twin computes the same
        np.testing.assert_allclose(
            channels_first.run_twin(folded, x),
            to_numpy(folded(x)),
            rtol=TOLERANCE,
            atol=TOLERANCE,
        )


def test_bn_on_another_axis_is_kept():
    model = keras.Sequential(
        [
            keras.Input((4, 6)),
            keras.layers.Dense(5, name="d"),
            keras.layers.BatchNormalization(axis=1, name="bn"),
        ]
    )
    folded, report = bn_keras.fold_batchnorm(model, return_report=True)
    assert [layer.name for layer in folded.layers] == ["d", "bn"]
    assert report["kept"] == [
        {
            "batchnorm": "bn",
            "reason": "it normalizes axis 1, not the features axis of 'd'",
        }
    ]


def _residual():
    inputs = keras.Input((8, 8, 3), name="image")
    a = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="c1")(
        inputs
    )
    a = keras.layers.BatchNormalization(name="bn1")(a)  # folded
    a = keras.layers.ReLU(name="r1")(a)
    b = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c2")(
        a
    )
    b = bn_keras.layers.BatchNormalization(name="bn2")(b)  # after an activation
    c = keras.layers.Add(name="add")([a, b])
    c = bn_keras.layers.BatchNormalization(name="bn3")(c)  # after an add
    d = keras.layers.Conv2D(4, 1, name="c4")(c)
    e = keras.layers.BatchNormalization(name="bn4")(d)  # c4 also feeds "add2"
    f = keras.layers.Add(name="add2")([d, e])
    g = keras.layers.GlobalAveragePooling2D(name="gap")(f)
    h = keras.layers.Dense(6, name="dense")(g)
    h = bn_keras.layers.GhostBatchNormalization(name="bn5")(h)  # folded
    outputs = keras.layers.Dense(2, name="logits")(h)
    return keras.Model(inputs, outputs, name="residual")


def test_fold_residual_model_folds_what_it_can():
    model = _residual()
    _random_bn(model, seed=7)
    folded, report = bn_keras.fold_batchnorm(model, return_report=True)
    assert report["folded"] == [
        {"layer": "c1", "batchnorm": "bn1"},
        {"layer": "dense", "batchnorm": "bn5"},
    ]
    kept = {entry["batchnorm"]: entry["reason"] for entry in report["kept"]}
    assert kept == {
        "bn2": "'c2' has a non-linear activation before it",
        "bn3": "it follows 'add' (Add)",
        "bn4": "the output of 'c4' is used elsewhere too",
    }
    assert [bn.name for bn in bn_keras.find_batchnorm(folded)] == [
        "bn2",
        "bn3",
        "bn4",
    ]
    assert folded.name == "residual"
    _assert_same_predictions(folded, model, sample_inputs((4, 8, 8, 3)))
    # The original model is unchanged.
    assert len(bn_keras.find_batchnorm(model)) == 5


def test_fold_after_insert_batchnorm_and_training():
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, activation="relu", name="h"),
            keras.layers.Dense(2, name="out"),
        ]
    )
    new = bn_keras.insert_batchnorm(model)
    new.compile(keras.optimizers.SGD(0.05), "mse")
    x = sample_inputs((64, 6))
    new.fit(x, x[:, :2], batch_size=16, epochs=2, verbose=0)
    folded = bn_keras.fold_batchnorm(new)
    assert [layer.name for layer in folded.layers] == ["h", "h_act", "out"]
    _assert_same_predictions(folded, new, x)


def test_fold_bn_blocks():
    inputs = keras.Input((6,))
    h = bn_keras.layers.BNBlock(
        keras.layers.Dense(5), activation="relu", name="block1"
    )(inputs)
    h = bn_keras.layers.BNBlock(
        keras.layers.Dense(5),
        activation="relu",
        placement="layer-act-bn",
        name="block2",
    )(h)
    model = keras.Model(inputs, keras.layers.Dense(1, name="o")(h))
    _random_bn(model, seed=11)
    folded, report = bn_keras.fold_batchnorm(model, return_report=True)
    block1 = model.get_layer("block1")
    assert report["folded"] == [
        {
            "layer": f"block1/{block1.layer.name}",
            "batchnorm": f"block1/{block1.normalization.name}",
        }
    ]
    assert report["kept"][0]["batchnorm"].startswith("block2/")
    new = folded.get_layer("block1")
    assert isinstance(new, keras.layers.Dense)
    assert new.activation is keras.activations.relu and new.use_bias
    assert isinstance(folded.get_layer("block2"), bn_keras.layers.BNBlock)
    _assert_same_predictions(folded, model, sample_inputs((8, 6)))


def test_fold_nested_model():
    inner = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(5, name="d"),
            keras.layers.BatchNormalization(name="bn"),
        ],
        name="inner",
    )
    inputs = keras.Input((6,))
    model = keras.Model(inputs, keras.layers.Dense(1, name="o")(inner(inputs)))
    _random_bn(model, seed=2)
    folded, report = bn_keras.fold_batchnorm(model, return_report=True)
    assert report["folded"] == [{"layer": "inner/d", "batchnorm": "inner/bn"}]
    assert [layer.name for layer in folded.get_layer("inner").layers] == ["d"]
    _assert_same_predictions(folded, model, sample_inputs((4, 6)))


def test_report_is_logged(caplog):
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(2),
            keras.layers.BatchNormalization(name="bn"),
        ]
    )
    with caplog.at_level(logging.INFO, logger="bn_keras"):
        folded = bn_keras.fold_batchnorm(model)
    assert isinstance(folded, keras.Sequential)  # no report by default
    assert re.search(r"folded 'bn' into 'dense(_\d+)?'", caplog.text)


def test_subclassed_model_is_refused():
    class Net(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(TypeError, match="subclassed model") as info:
        bn_keras.fold_batchnorm(Net(name="net"))
    assert str(info.value).endswith(
        "Received: model=<subclassed model Net name=net>"
    )


def test_return_report_must_be_a_boolean():
    with pytest.raises(TypeError, match=re.escape("Received: return_report=1")):
        bn_keras.fold_batchnorm(
            keras.Sequential([keras.Input((2,))]), return_report=1
        )


def _saved_size(model, path):
    model.save(path)
    return os.path.getsize(path)


def test_folded_model_has_no_optimizer_state(tmp_path):
    """A model trained with Adam folds into an uncompiled model: no
    optimizer variables, and saved, the size of the unfolded model saved
    without its optimizer (within 5%), where the trained model with Adam's
    two slots per weight is about three times as large."""
    inputs = keras.Input((4, 4, 96))
    h = inputs
    for _ in range(3):
        h = keras.layers.Conv2D(96, 3, padding="same", use_bias=False)(h)
        h = keras.layers.ReLU()(keras.layers.BatchNormalization()(h))
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inputs, keras.layers.Dense(4)(h))
    model.compile(keras.optimizers.Adam(), "mse")
    x = sample_inputs((8, 4, 4, 96))
    model.fit(x, np.zeros((8, 4)), epochs=1, verbose=0)
    assert len(model.optimizer.variables) > 10  # Adam's slots are built
    folded = bn_keras.fold_batchnorm(model)
    assert not folded.compiled
    assert getattr(folded, "optimizer", None) is None
    _assert_same_predictions(folded, model, x)
    bare = keras.Model(model.input, model.output)  # same layers, uncompiled
    assert getattr(bare, "optimizer", None) is None
    sizes = {
        name: _saved_size(m, str(tmp_path / f"{name}.keras"))
        for name, m in [("folded", folded), ("bare", bare), ("adam", model)]
    }
    assert abs(sizes["folded"] / sizes["bare"] - 1) < 0.05, sizes
    assert sizes["adam"] > 2.5 * sizes["bare"], sizes
    # Compiled again, it evaluates.
    folded.compile(loss="mse")
    assert np.isfinite(folded.evaluate(x, np.zeros((8, 4)), verbose=0))
