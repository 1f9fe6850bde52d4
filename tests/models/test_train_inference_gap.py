"""`train_inference_gap` against the model run by hand in each mode."""

import re

import keras
import numpy as np
import pytest

import bn_keras


def classifier(kind="keras", dropout=0.0, units=3, activation=None):
    if kind == "ghost":
        bn = bn_keras.layers.GhostBatchNormalization(virtual_batch_size=4)
    elif kind == "renorm":
        bn = bn_keras.layers.BatchRenormalization()
    else:
        bn = keras.layers.BatchNormalization()
    layers = [keras.Input((4,)), keras.layers.Dense(8), bn, keras.layers.ReLU()]
    if dropout:
        layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(units, activation=activation))
    model = keras.Sequential(layers)
    rng = np.random.default_rng(5)
    bn = bn_keras.find_batchnorm(model)[0]
    bn.moving_mean.assign(3 * rng.normal(size=8).astype("float32"))
    bn.moving_variance.assign(rng.uniform(0.2, 3.0, 8).astype("float32"))
    return model


def by_hand(model, x, batch_size):
    """Training-mode outputs batch by batch (dropout layers removed), the
    state put back after each, and inference outputs."""
    plain = keras.Sequential(
        [keras.Input(x.shape[1:])]
        + [
            layer
            for layer in model.layers
            if not isinstance(layer, keras.layers.Dropout)
        ]
    )
    saved = [v.numpy() for v in model.variables]
    training = []
    for begin in range(0, len(x), batch_size):
        batch = x[begin : begin + batch_size]
        training.append(keras.ops.convert_to_numpy(plain(batch, training=True)))
        for variable, value in zip(model.variables, saved):
            variable.assign(value)
    inference = keras.ops.convert_to_numpy(model(x, training=False))
    return np.concatenate(training), inference


@pytest.fixture
def data(rng):
    x = (rng.normal(size=(48, 4)) * [1, 2, 3, 4] + 1).astype("float32")
    return x, rng.integers(0, 3, size=48)


@pytest.mark.parametrize(
    "kind, dropout",
    [("keras", 0.0), ("keras", 0.5), ("ghost", 0), ("renorm", 0)],
)
def test_classes_against_the_model_run_by_hand(kind, dropout, data):
    x, y = data
    model = classifier(kind, dropout)
    saved = [v.numpy() for v in model.variables]
    gap = bn_keras.models.train_inference_gap(model, (x, y), batch_size=8)
    for variable, value in zip(model.variables, saved):  # left as it was
        np.testing.assert_array_equal(variable.numpy(), value)
    training, inference = by_hand(model, x, 8)
    expected_training = np.mean(training.argmax(-1) == y)
    expected_inference = np.mean(inference.argmax(-1) == y)
    agreement = np.mean(training.argmax(-1) == inference.argmax(-1))
    assert gap["samples"] == 48
    assert gap["metric"] == "accuracy"
    assert gap["training"] == pytest.approx(expected_training)
    assert gap["inference"] == pytest.approx(expected_inference)
    assert gap["gap"] == pytest.approx(expected_training - expected_inference)
    assert gap["agreement"] == pytest.approx(agreement)
    # Moving statistics far from the batches': the modes differ.
    assert np.abs(training - inference).max() > 0.5


def test_without_targets_only_agreement(data):
    x, _ = data
    model = classifier()
    gap = bn_keras.models.train_inference_gap(model, x, batch_size=8)
    assert gap["metric"] is None and gap["gap"] is None
    training, inference = by_hand(model, x, 8)
    assert gap["agreement"] == pytest.approx(
        np.mean(training.argmax(-1) == inference.argmax(-1))
    )


def test_binary_probabilities_and_one_hot_targets(data):
    x, y = data
    model = classifier(units=1, activation="sigmoid")
    binary = (y > 0).astype("int32")
    gap = bn_keras.models.train_inference_gap(model, (x, binary), batch_size=8)
    training, inference = by_hand(model, x, 8)
    assert gap["training"] == pytest.approx(
        np.mean((training[:, 0] > 0.5) == binary)
    )
    one_hot = np.eye(3)[y]
    model = classifier()
    gap = bn_keras.models.train_inference_gap(model, (x, one_hot), batch_size=8)
    _, inference = by_hand(model, x, 8)
    assert gap["inference"] == pytest.approx(np.mean(inference.argmax(-1) == y))


def test_values_compare_by_mean_squared_error(data):
    x, _ = data
    model = classifier(units=1)
    target = x[:, :1] * 2.5
    gap = bn_keras.models.train_inference_gap(model, (x, target), batch_size=8)
    training, inference = by_hand(model, x, 8)
    assert gap["metric"] == "mean squared error"
    assert gap["training"] == pytest.approx(
        np.mean(np.square(training - target)), rel=1e-5
    )
    change = np.sqrt(np.mean(np.square(training - inference)))
    assert gap["relative_change"] == pytest.approx(
        change / inference.std(), rel=1e-5
    )


@pytest.mark.parametrize(
    "kwargs, error, received",
    [
        ({"steps": 0}, ValueError, "steps=0"),
        ({"batch_size": -1}, ValueError, "batch_size=-1"),
    ],
)
def test_errors(kwargs, error, received, data):
    with pytest.raises(error, match=f"Received: {re.escape(received)}"):
        bn_keras.models.train_inference_gap(classifier(), data[0], **kwargs)


def test_no_batch_is_an_error():
    with pytest.raises(
        ValueError, match="yielded no batch.*Received: data of type list"
    ):
        bn_keras.models.train_inference_gap(classifier(), [])
