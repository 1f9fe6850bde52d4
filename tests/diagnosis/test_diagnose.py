"""`bn_keras.diagnose`: the model left as it was, data sources, and bad
input."""

import re

import keras
import numpy as np
import pytest

import bn_keras
from tests.callbacks.helpers import Batches

L = keras.layers


def mixed_model():
    """Keras's BN (one frozen), ghost and renorm layers, a nested model."""
    inner = keras.Sequential(
        [
            keras.Input((8,)),
            L.Dense(8),
            bn_keras.layers.GhostBatchNormalization(virtual_batch_size=4),
        ],
        name="inner",
    )
    frozen = L.BatchNormalization(name="frozen")
    frozen.trainable = False
    model = keras.Sequential(
        [
            keras.Input((5,)),
            L.Dense(8),
            frozen,
            L.ReLU(),
            inner,
            bn_keras.layers.BatchRenormalization(name="renorm"),
            L.Dense(3),
        ]
    )
    rng = np.random.default_rng(2)
    for layer in bn_keras.find_batchnorm(model):
        channels = layer.moving_mean.shape[0]
        layer.moving_mean.assign(rng.normal(size=channels))
        layer.moving_variance.assign(rng.uniform(0.5, 2, channels))
    return model


@pytest.fixture
def data(rng):
    x = (rng.normal(size=(96, 5)) * 3 + 1).astype("float32")
    return x, rng.integers(0, 3, size=96)


def test_the_model_is_left_as_it_was(data):
    model = mixed_model()
    model(data[0][:8], training=True)  # a renorm step: a counter that moves
    before = [v.numpy().copy() for v in model.variables]
    flags = [layer.trainable for layer in bn_keras.find_batchnorm(model)]
    report = bn_keras.diagnose(model, data, batch_size=8)
    assert report.findings  # the check ran through every pass
    for variable, value in zip(model.variables, before):
        np.testing.assert_array_equal(variable.numpy(), value, variable.path)
    assert flags == [
        layer.trainable for layer in bn_keras.find_batchnorm(model)
    ]
    fixed = report.fix()
    for variable, value in zip(model.variables, before):
        np.testing.assert_array_equal(variable.numpy(), value, variable.path)
    assert len(fixed.variables) == len(model.variables)


@pytest.mark.parametrize(
    "source",
    [
        "generator",
        "pydataset",
        pytest.param("tf_dataset", marks=pytest.mark.tensorflow_only),
    ],
)
def test_data_sources_agree_with_arrays(source, data):
    x, y = data
    model = mixed_model()
    expected = bn_keras.diagnose(model, (x, y), batch_size=32)
    if source == "generator":
        batches = ((x[i : i + 32], y[i : i + 32]) for i in range(0, 96, 32))
    elif source == "pydataset":
        batches = Batches(x, y, 32)
    else:
        import tensorflow as tf

        batches = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    report = bn_keras.diagnose(model, batches)
    numbers = ("samples", "batch_size", "changed_share", "before", "after")
    for key in numbers:
        assert report.summary[key] == pytest.approx(expected.summary[key])
    assert [f.code for f in report.findings] == [
        f.code for f in expected.findings
    ]


def test_steps_limit_the_samples(data):
    report = bn_keras.diagnose(mixed_model(), data, batch_size=8, steps=4)
    assert report.summary["samples"] == 32
    assert report.summary["batch_size"] == 8


@pytest.mark.parametrize(
    "call, error, message",
    [
        (
            lambda x, y: bn_keras.diagnose(mixed_model(), (x[:20], y[:20])),
            ValueError,
            "needs at least 2 batches.*Received: data of type tuple with 20 "
            "samples",
        ),
        (
            lambda x, y: bn_keras.diagnose(mixed_model(), x[:, :4]),
            ValueError,
            re.escape(
                "expects inputs of shape (None, 5), the data's batches have "
                "shape (32, 4)"
            ),
        ),
        (
            lambda x, y: bn_keras.diagnose(L.Dense(3), x),
            TypeError,
            "Received: model of type Dense",
        ),
        (
            lambda x, y: bn_keras.diagnose(mixed_model(), x, batch_size=0),
            ValueError,
            "Received: batch_size=0",
        ),
        (
            lambda x, y: bn_keras.diagnose(mixed_model(), x, steps=-2),
            ValueError,
            "Received: steps=-2",
        ),
    ],
)
def test_bad_input(call, error, message, data):
    with pytest.raises(error, match=message):
        call(*data)


def test_fix_without_a_model():
    report = bn_keras.diagnosis.DiagnosisReport([], {"model": "m"})
    with pytest.raises(ValueError, match="no model to fix"):
        report.fix()


def test_dict_inputs(data):
    x, y = data
    features = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    h = L.Concatenate()(list(features))
    bn = L.BatchNormalization(momentum=0.5)
    h = bn(L.Dense(8, use_bias=False)(h))
    model = keras.Model(
        {"a": features[0], "b": features[1]}, L.Dense(3)(L.ReLU()(h))
    )
    bn.gamma.assign(np.full(8, 1.5, "float32"))  # not an untrained model
    inputs = {"a": x[:, :3], "b": x[:, 3:]}
    report = bn_keras.diagnose(model, (inputs, y), batch_size=16)
    # Statistics never updated: found; precise statistics change the
    # predictions (the inputs' mean is 1, their spread 3).
    assert report.findings[0].code == "statistics-mismatch"
    assert report.summary["samples"] == 96


def chain(depth):
    """Dense -> BN -> ReLU `depth` times, statistics never updated."""
    layers = [keras.Input((5,))]
    for _ in range(depth):
        layers += [L.Dense(6), L.BatchNormalization(), L.ReLU()]
    return keras.Sequential(layers + [L.Dense(3)])


@pytest.mark.parametrize("depth, method", [(2, "two-pass"), (3, "one-pass")])
def test_fix_sets_what_recalibrate_computes(depth, method, data):
    # Two passes where they are exact (no layer deeper than 2), else one.
    x, _ = data
    model = chain(depth)
    report = bn_keras.diagnose(model, x)  # without targets: fix() applies
    assert report.summary["precise_method"] == method
    assert report.fixes
    fixed = report.fix()
    bn_keras.recalibrate(model, x, method=method)
    for ours, reference in zip(
        bn_keras.find_batchnorm(fixed), bn_keras.find_batchnorm(model)
    ):
        np.testing.assert_allclose(
            ours.moving_mean, reference.moving_mean, rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(
            ours.moving_variance, reference.moving_variance, rtol=1e-5
        )
    text = " ".join(report.text().split())
    assert "as bn_keras.recalibrate computes them on the data" in text
    assert ('with method="one-pass"' in text) == (method == "one-pass")
