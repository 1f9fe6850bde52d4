"""The statistics reader, the non-finite scan and guard, and the event
writer that the monitor, `bn-keras inspect` and the tuner share."""

import keras
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.scalar.summary_v2 import scalar_pb
from tensorboard.util import tensor_util

import bn_keras
from bn_keras._statistics import dead_channels
from bn_keras._statistics import nonfinite
from bn_keras._statistics import read_statistics
from bn_keras._statistics import set_statistics
from bn_keras.callbacks._event_writer import SummaryWriter
from bn_keras.callbacks._nonfinite_guard import NonFiniteGuard


def _renorm_layer(rng, channels=4):
    layer = bn_keras.layers.BatchNormalization(renorm=True, scale=True)
    layer.build((None, channels))
    values = {}
    for variable in layer.weights:
        if variable.dtype == "float32":
            values[variable.name] = rng.normal(size=channels)
            variable.assign(values[variable.name].astype("float32"))
    return layer, values


def test_read_statistics_reads_every_statistic_as_float64(rng):
    layer, values = _renorm_layer(rng)
    statistics = read_statistics(layer)
    assert list(statistics) == [
        "moving_mean",
        "moving_variance",
        "gamma",
        "beta",
        "moving_stddev",
        "renorm_mean",
        "renorm_stddev",
    ]
    for name, value in statistics.items():
        assert value.dtype == np.float64
        np.testing.assert_array_equal(
            value, values[name].astype("float32").astype(np.float64)
        )
    plain = keras.layers.BatchNormalization(center=False)
    plain.build((None, 3))
    assert list(read_statistics(plain)) == [
        "moving_mean",
        "moving_variance",
        "gamma",
    ]
    assert read_statistics(keras.layers.BatchNormalization()) == {}


@pytest.mark.parametrize(
    "layer_class", [keras.layers.BatchNormalization, _renorm_layer]
)
def test_set_statistics_sets_what_inference_uses(rng, layer_class):
    if layer_class is _renorm_layer:
        layer, values = _renorm_layer(rng)
    else:
        layer = keras.layers.BatchNormalization(renorm=True, epsilon=0.01)
        layer.build((None, 4))
    mean = rng.normal(size=4)
    variance = rng.uniform(0.5, 2.0, size=4)
    gamma_before = keras.ops.convert_to_numpy(layer.gamma)
    set_statistics(layer, mean, variance)
    statistics = read_statistics(layer)
    np.testing.assert_allclose(statistics["moving_mean"], mean, rtol=1e-6)
    np.testing.assert_allclose(
        statistics["moving_variance"], variance, rtol=1e-6
    )
    stddev = np.sqrt(variance + layer.epsilon)
    for name in ("moving_stddev", "renorm_stddev"):
        np.testing.assert_allclose(statistics[name], stddev, rtol=1e-6)
    np.testing.assert_allclose(statistics["renorm_mean"], mean, rtol=1e-6)
    np.testing.assert_array_equal(statistics["gamma"], gamma_before)
    # Inference normalizes with exactly these statistics.
    x = rng.normal(size=(5, 4)).astype("float32")
    expected = (x - mean) / stddev * gamma_before + statistics["beta"]
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer(x, training=False)),
        expected,
        rtol=1e-4,
        atol=1e-5,
    )


def test_nonfinite_counts_nan_and_inf_per_array(rng):
    values = {
        "a": rng.normal(size=5),
        "b": np.array([np.nan, 1.0, -np.inf, np.inf]),
        "c": np.array([[0.0, np.nan], [1.0, 2.0]]),
    }
    expected = {
        name: int(np.isnan(v).sum() + np.isinf(v).sum())
        for name, v in values.items()
    }
    assert nonfinite(values) == {
        name: count for name, count in expected.items() if count
    }
    assert list(nonfinite(values)) == ["b", "c"]


def test_dead_channels_below_the_threshold():
    gamma = np.array([0.0, 9e-4, -9e-4, 1e-3, -2e-3, 0.5])
    np.testing.assert_array_equal(
        dead_channels(gamma),
        [True, True, True, False, False, False],
    )


class _PoisonAt(keras.callbacks.Callback):
    """Makes the named layer's moving variance NaN at the end of a batch."""

    def __init__(self, name, batch):
        super().__init__()
        self.name, self.batch, self.seen = name, batch, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.batch:
            variable = self.model.get_layer(self.name).moving_variance
            variable.assign(np.full(variable.shape, np.nan, "float32"))


def _model():
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.BatchNormalization(name="first"),
            keras.layers.Dense(2),
            bn_keras.layers.BatchNormalization(name="second"),
        ]
    )
    model.compile("sgd", "mse")
    return model


def test_guard_stops_at_the_end_of_the_epoch_that_went_bad(rng):
    x = rng.normal(size=(64, 3)).astype("float32")
    y = rng.normal(size=(64, 2)).astype("float32")
    model = _model()
    guard = NonFiniteGuard()
    # Batch 6 of 4 per epoch: in the second epoch.
    history = model.fit(
        x,
        y,
        batch_size=16,
        epochs=5,
        verbose=0,
        callbacks=[_PoisonAt("second", 6), guard],
    )
    assert len(history.epoch) == 2


def test_guard_check_returns_each_layer_once_and_stops_only_if_asked(rng):
    model = _model()
    for stop in (False, True):
        model.stop_training = False
        guard = NonFiniteGuard(stop=stop)
        guard.set_model(model)
        guard.on_train_begin()
        good = {"g": {"gamma": np.ones(2)}}
        bad = {"b": {"gamma": np.ones(2), "moving_mean": np.array([np.nan, 0])}}
        assert guard.check(good) == {}
        assert model.stop_training is False
        assert guard.check({**good, **bad}) == {"b": ["moving_mean"]}
        assert model.stop_training is stop
        assert guard.check({**good, **bad}) == {}  # reported once
        guard.on_train_begin()  # a new `fit` reports it again
        assert guard.check(bad) == {"b": ["moving_mean"]}


def test_summary_writer_round_trip(tmp_path):
    writer = SummaryWriter(str(tmp_path))
    for step, value in [(0, 1.5), (3, -2.25)]:
        writer.write(scalar_pb("figure", np.float32(value)), step)
    writer.close()
    accumulator = event_accumulator.EventAccumulator(
        str(tmp_path), size_guidance={event_accumulator.TENSORS: 0}
    )
    accumulator.Reload()
    read = {
        event.step: float(tensor_util.make_ndarray(event.tensor_proto))
        for event in accumulator.Tensors("figure")
    }
    assert read == {0: 1.5, 3: -2.25}


@pytest.mark.parametrize("bad_weight", ["gamma", "moving_variance"])
def test_tuner_scan_names_the_bad_weights_in_layer_order(rng, bad_weight):
    keras_tuner = pytest.importorskip("keras_tuner")
    del keras_tuner
    from bn_keras.tuner.bn_hypermodel import nonfinite_batchnorm_weights

    model = _model()
    model(np.zeros((2, 3), "float32"))
    assert nonfinite_batchnorm_weights(model) == []
    second = model.get_layer("second")
    for name in (bad_weight, "beta"):
        variable = getattr(second, name)
        variable.assign(np.full(variable.shape, np.inf, "float32"))
    # Keras's weight order: gamma, beta, moving_mean, moving_variance.
    expected = ["second/beta", f"second/{bad_weight}"]
    if bad_weight == "gamma":
        expected.reverse()
    assert nonfinite_batchnorm_weights(model) == expected
