import re

import keras
import numpy as np
import pytest

import bn_keras
from tests.callbacks.helpers import Batches
from tests.callbacks.helpers import weights_of

TOLERANCE = dict(rtol=1e-4, atol=1e-4)


def make_bn(kind, name, axis=-1):
    if kind == "keras":
        return keras.layers.BatchNormalization(
            axis=axis, momentum=0.999, name=name
        )
    if kind == "keras_renorm":
        return keras.layers.BatchNormalization(
            axis=axis, momentum=0.999, renorm=True, name=name
        )
    if kind == "ours":
        return bn_keras.layers.BatchNormalization(
            axis=axis, momentum=0.999, name=name
        )
    if kind == "ghost":
        return bn_keras.layers.GhostBatchNormalization(
            axis=axis, virtual_batch_size=8, momentum=0.999, name=name
        )
    if kind == "renorm":
        return bn_keras.layers.BatchRenormalization(
            axis=axis, momentum=0.999, name=name
        )
    raise ValueError(kind)


def two_bn_model(kind):
    """Dense -> BN -> ReLU -> (nested: Dense -> BN), random gamma and beta."""
    inner = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(5, name="dense_2"),
            make_bn(kind, "bn_2"),
        ],
        name="inner",
    )
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, name="dense_1"),
            make_bn(kind, "bn_1"),
            keras.layers.ReLU(),
            inner,
        ]
    )
    rng = np.random.default_rng(1)
    for layer in bn_keras.find_batchnorm(model):
        channels = layer.gamma.shape[0]
        layer.gamma.assign(rng.uniform(0.5, 2.0, channels).astype("float32"))
        layer.beta.assign(rng.normal(size=channels).astype("float32"))
    return model


def numpy_population_statistics(model, x):
    """Each BN layer's inputs on `x`, in NumPy, earlier BN layers using the
    population statistics of their own inputs (the inference path)."""
    w = {
        name: weights_of(layer)
        for name, layer in (
            ("dense_1", model.get_layer("dense_1")),
            ("dense_2", model.get_layer("inner").get_layer("dense_2")),
            ("bn_1", model.get_layer("bn_1")),
            ("bn_2", model.get_layer("inner").get_layer("bn_2")),
        )
    }
    eps = model.get_layer("bn_1").epsilon
    h1 = x.astype(np.float64) @ w["dense_1"]["kernel"] + w["dense_1"]["bias"]
    mean_1, var_1 = h1.mean(axis=0), h1.var(axis=0)
    a1 = np.maximum(
        w["bn_1"]["gamma"] * (h1 - mean_1) / np.sqrt(var_1 + eps)
        + w["bn_1"]["beta"],
        0,
    )
    h2 = a1 @ w["dense_2"]["kernel"] + w["dense_2"]["bias"]
    return {"bn_1": (mean_1, var_1), "bn_2": (h2.mean(axis=0), h2.var(axis=0))}


def assert_recalibrated(model, expected):
    for layer in bn_keras.find_batchnorm(model):
        mean, var = expected[layer.name]
        got = weights_of(layer)
        np.testing.assert_allclose(got["moving_mean"], mean, **TOLERANCE)
        np.testing.assert_allclose(got["moving_variance"], var, **TOLERANCE)
        if layer.renorm:
            stddev = np.sqrt(var + layer.epsilon)
            np.testing.assert_allclose(
                got["moving_stddev"], stddev, **TOLERANCE
            )
            np.testing.assert_allclose(got["renorm_mean"], mean, **TOLERANCE)
            np.testing.assert_allclose(
                got["renorm_stddev"], stddev, **TOLERANCE
            )


@pytest.fixture
def data(rng):
    x = (rng.normal(size=(160, 6)) * [1, 2, 3, 4, 5, 6] + 3).astype("float32")
    y = rng.normal(size=(160, 5)).astype("float32")
    return x, y


@pytest.mark.parametrize(
    "kind", ["keras", "keras_renorm", "ours", "ghost", "renorm"]
)
def test_recalibrate_matches_numpy(kind, data):
    x, _ = data
    model = two_bn_model(kind)
    before = [weights_of(layer) for layer in bn_keras.find_batchnorm(model)]
    # 4 batches of 32: the first 128 samples.
    bn_keras.recalibrate(model, x, steps=4, batch_size=32)
    expected = numpy_population_statistics(model, x[:128])
    assert_recalibrated(model, expected)
    # Far from the initial statistics, so the check can fail.
    assert np.abs(before[0]["moving_mean"] - expected["bn_1"][0]).max() > 1.0
    for layer, old in zip(bn_keras.find_batchnorm(model), before):
        now = weights_of(layer)
        np.testing.assert_array_equal(now["gamma"], old["gamma"])
        if "renorm_step" in now:
            np.testing.assert_array_equal(
                now["renorm_step"], old["renorm_step"]
            )
    # Inference now uses them: each BN layer's output on the calibration
    # data has zero mean and nearly unit variance before gamma and beta.
    bn_2 = model.get_layer("inner").get_layer("bn_2")
    outputs = keras.ops.convert_to_numpy(model(x[:128], training=False))
    gamma, beta = weights_of(bn_2)["gamma"], weights_of(bn_2)["beta"]
    normalized = (outputs - beta) / gamma
    np.testing.assert_allclose(normalized.mean(axis=0), 0.0, atol=1e-4)


@pytest.mark.parametrize("kind", ["keras", "ghost"])
def test_recalibrate_channels_first_rank_3(kind, rng):
    x = (rng.normal(size=(48, 4, 3)) * [[1], [2], [3], [4]] + 2).astype(
        "float32"
    )
    model = keras.Sequential(
        [
            keras.Input((4, 3)),
            make_bn(kind, "axis_1", axis=1),
            keras.layers.Dense(5, name="dense"),
            make_bn(kind, "axis_last", axis=-1),
        ]
    )
    bn_keras.recalibrate(model, x, steps=10, batch_size=16)
    rows = np.moveaxis(x.astype(np.float64), 1, -1).reshape(-1, 4)
    mean_1, var_1 = rows.mean(axis=0), rows.var(axis=0)
    eps = 1e-3
    first = model.get_layer("axis_1")
    np.testing.assert_allclose(
        weights_of(first)["moving_mean"], mean_1, **TOLERANCE
    )
    np.testing.assert_allclose(
        weights_of(first)["moving_variance"], var_1, **TOLERANCE
    )
    normalized = (x - mean_1[:, None]) / np.sqrt(var_1[:, None] + eps)
    dense = weights_of(model.get_layer("dense"))
    h = (normalized @ dense["kernel"] + dense["bias"]).reshape(-1, 5)
    second = weights_of(model.get_layer("axis_last"))
    np.testing.assert_allclose(
        second["moving_mean"], h.mean(axis=0), **TOLERANCE
    )
    np.testing.assert_allclose(
        second["moving_variance"], h.var(axis=0), **TOLERANCE
    )


def test_recalibrate_leaves_masked_steps_out(rng):
    x = rng.normal(size=(40, 6, 3)).astype("float32") + 1
    x[:, 4:] = 0.0  # masked by Masking(0.0)
    x[::3, 2:] = 0.0
    model = keras.Sequential(
        [
            keras.Input((6, 3)),
            keras.layers.Masking(0.0),
            keras.layers.BatchNormalization(momentum=0.999, name="bn"),
        ]
    )
    bn_keras.recalibrate(model, x, steps=5, batch_size=8)
    kept = np.any(x != 0.0, axis=-1)
    rows = x.astype(np.float64)[kept]
    got = weights_of(model.get_layer("bn"))
    np.testing.assert_allclose(
        got["moving_mean"], rows.mean(axis=0), **TOLERANCE
    )
    np.testing.assert_allclose(
        got["moving_variance"], rows.var(axis=0), **TOLERANCE
    )


def generator(x, y, batch_size):
    for begin in range(0, len(x), batch_size):
        yield x[begin : begin + batch_size], y[begin : begin + batch_size]


@pytest.mark.parametrize(
    "source",
    [
        "arrays_xy",
        "dict",
        "generator",
        "pydataset",
        pytest.param("tf_dataset", marks=pytest.mark.tensorflow_only),
    ],
)
def test_recalibrate_data_sources(source, data):
    x, y = data
    model = two_bn_model("ours")
    steps = 3  # 3 batches of 16: the first 48 samples, whatever the source
    if source == "arrays_xy":
        bn_keras.recalibrate(model, (x, y), steps=steps, batch_size=16)
    elif source == "dict":
        features = keras.Input((6,), name="features")
        functional = keras.Model({"features": features}, model(features))
        bn_keras.recalibrate(
            functional, {"features": x}, steps=steps, batch_size=16
        )
    elif source == "generator":
        # Two BN layers: two passes, the second over the kept batches.
        bn_keras.recalibrate(model, generator(x, y, 16), steps=steps)
    elif source == "pydataset":
        bn_keras.recalibrate(model, Batches(x, y, 16), steps=steps)
    else:
        import tensorflow as tf

        dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
        bn_keras.recalibrate(model, dataset, steps=steps)
    assert_recalibrated(model, numpy_population_statistics(model, x[:48]))


def test_fewer_batches_than_steps_uses_them_all(data):
    x, _ = data
    model = two_bn_model("keras")
    bn_keras.recalibrate(model, x[:40], steps=200, batch_size=16)  # 16+16+8
    assert_recalibrated(model, numpy_population_statistics(model, x[:40]))


def test_precise_bn_on_train_end(data):
    x, y = data
    model = two_bn_model("renorm")
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    precise = bn_keras.callbacks.PreciseBN(x, steps=5, batch_size=32)
    model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[precise])
    assert_recalibrated(model, numpy_population_statistics(model, x))


def test_precise_bn_on_epoch_end(data):
    x, y = data
    model = two_bn_model("ghost")
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")

    class CheckEveryEpoch(keras.callbacks.Callback):
        checked = []

        def on_epoch_end(self, epoch, logs=None):
            assert_recalibrated(
                self.model, numpy_population_statistics(self.model, x[:64])
            )
            self.checked.append(epoch)

    precise = bn_keras.callbacks.PreciseBN(
        x, steps=2, on="epoch_end", batch_size=32
    )
    model.fit(
        x,
        y,
        batch_size=32,
        epochs=2,
        verbose=0,
        callbacks=[precise, CheckEveryEpoch()],
    )
    assert CheckEveryEpoch.checked == [0, 1]


def test_recalibration_raises_accuracy_with_slow_momentum():
    """A short training with momentum=0.999 leaves the moving statistics
    near their initial values; recalibration fixes inference."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    x = digits.data.astype("float32")[order]
    y = digits.target[order]
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(64),
            keras.layers.BatchNormalization(momentum=0.999),
            keras.layers.ReLU(),
            keras.layers.Dense(10),
        ]
    )
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x[:1400], y[:1400], batch_size=32, epochs=2, verbose=0)
    before = model.evaluate(x[1400:], y[1400:], verbose=0)[1]
    bn_keras.recalibrate(model, x[:1400], steps=50, batch_size=32)
    after = model.evaluate(x[1400:], y[1400:], verbose=0)[1]
    assert after > before + 0.2, (before, after)
    assert after > 0.9, (before, after)


@pytest.mark.parametrize(
    "call, error, received",
    [
        (
            lambda x: bn_keras.recalibrate(two_bn_model("keras"), x, steps=0),
            ValueError,
            "steps=0",
        ),
        (
            lambda x: bn_keras.recalibrate(two_bn_model("keras"), x, steps=2.0),
            ValueError,
            "steps=2.0",
        ),
        (
            lambda x: bn_keras.recalibrate(
                two_bn_model("keras"), x, batch_size=0
            ),
            ValueError,
            "batch_size=0",
        ),
        (
            lambda x: bn_keras.recalibrate(
                two_bn_model("keras"), generator(x, x, 4), batch_size=4
            ),
            ValueError,
            "batch_size=4, data of type generator",
        ),
        (
            lambda x: bn_keras.recalibrate(two_bn_model("keras"), 3),
            TypeError,
            "data of type int",
        ),
        (
            lambda x: bn_keras.callbacks.PreciseBN(x, on="batch_end"),
            ValueError,
            "on='batch_end'",
        ),
        (
            lambda x: bn_keras.callbacks.PreciseBN(x, steps=-1),
            ValueError,
            "steps=-1",
        ),
    ],
)
def test_errors(call, error, received, data):
    with pytest.raises(error, match=f"Received: {re.escape(received)}"):
        call(data[0])


def test_empty_data_is_an_error(data):
    with pytest.raises(
        ValueError,
        match="yielded no batch.*Received: data of type list_iterator",
    ):
        bn_keras.recalibrate(two_bn_model("keras"), iter([]), steps=3)
