"""`recalibrate`'s algorithms against NumPy references written from their
definitions, and the depth of each BN layer they rest on.

(`tests/callbacks/test_precise_bn.py` checks the default against the
exact statistics on models where it is exact, and every data source.)
"""

import re

import keras
import numpy as np
import pytest

import bn_keras
from bn_keras.models._depth import batchnorm_depths

TOLERANCE = dict(rtol=1e-4, atol=1e-4)
EPSILON = 1e-3


def chain_model(kind="keras"):
    """Dense -> BN -> ReLU, three times: BN depths 1, 2 and 3."""
    layers = [keras.Input((5,))]
    for i in range(3):
        layers.append(keras.layers.Dense(6, name=f"dense_{i}"))
        if kind == "ghost":
            bn = bn_keras.layers.GhostBatchNormalization(
                virtual_batch_size=4, name=f"bn_{i}"
            )
        elif kind == "renorm":
            bn = bn_keras.layers.BatchRenormalization(name=f"bn_{i}")
        else:
            bn = keras.layers.BatchNormalization(name=f"bn_{i}")
        layers += [bn, keras.layers.ReLU()]
    model = keras.Sequential(layers)
    rng = np.random.default_rng(3)
    for layer in bn_keras.find_batchnorm(model):
        layer.gamma.assign(rng.uniform(0.5, 2.0, 6).astype("float32"))
        layer.beta.assign(rng.normal(size=6).astype("float32"))
    return model


def weights(model):
    """`(dense kernels and biases, BN gammas and betas)` as float64."""
    dense = [
        [
            w.astype(np.float64)
            for w in model.get_layer(f"dense_{i}").get_weights()
        ]
        for i in range(3)
    ]
    bn = [
        (
            np.asarray(model.get_layer(f"bn_{i}").gamma, np.float64),
            np.asarray(model.get_layer(f"bn_{i}").beta, np.float64),
        )
        for i in range(3)
    ]
    return dense, bn


def numpy_statistics(model, x, batch_size, modes):
    """The pooled moments of each BN layer's input, in NumPy, over batches
    of `x`; `modes[i]` is how BN layer `i` normalizes: by its batch
    (`"batch"`) or by `(mean, variance)` given."""
    dense, bn = weights(model)
    rows = [[] for _ in range(3)]
    for begin in range(0, len(x), batch_size):
        h = x[begin : begin + batch_size].astype(np.float64)
        for i in range(3):
            h = h @ dense[i][0] + dense[i][1]
            rows[i].append(h)
            if modes[i] == "batch":
                mean, variance = h.mean(axis=0), h.var(axis=0)
            else:
                mean, variance = modes[i]
            gamma, beta = bn[i]
            h = np.maximum(
                gamma * (h - mean) / np.sqrt(variance + EPSILON) + beta, 0
            )
    return [
        (np.concatenate(r).mean(axis=0), np.concatenate(r).var(axis=0))
        for r in rows
    ]


def exact_statistics(model, x):
    """Layer by layer, each with its predecessors' exact statistics."""
    exact = []
    for i in range(3):
        modes = exact + ["batch"] * (3 - len(exact))
        exact.append(numpy_statistics(model, x, len(x), modes)[i])
    return exact


def recalibrated(model):
    return [
        (
            np.asarray(layer.moving_mean, np.float64),
            np.asarray(layer.moving_variance, np.float64),
        )
        for layer in bn_keras.find_batchnorm(model)
    ]


def assert_statistics(got, expected, **tolerance):
    for (mean, variance), (mean_ref, variance_ref) in zip(got, expected):
        np.testing.assert_allclose(mean, mean_ref, **tolerance)
        np.testing.assert_allclose(variance, variance_ref, **tolerance)


@pytest.fixture
def x(rng):
    scale = np.array([1.0, 2.0, 3.0, 0.5, 4.0])
    return (rng.normal(size=(96, 5)) * scale + 2).astype("float32")


@pytest.mark.parametrize("kind", ["keras", "ghost", "renorm"])
def test_one_pass_normalizes_every_layer_by_its_batch(kind, x):
    model = chain_model(kind)
    bn_keras.recalibrate(model, x, batch_size=16, method="one-pass")
    expected = numpy_statistics(model, x, 16, ["batch"] * 3)
    assert_statistics(recalibrated(model), expected, **TOLERANCE)
    # Deeper layers differ from the exact statistics: the check can fail.
    exact = exact_statistics(model, x)
    assert np.abs(expected[2][1] - exact[2][1]).max() > 1e-2


def test_two_pass_is_exact_to_depth_two(x):
    model = chain_model()
    bn_keras.recalibrate(model, x, batch_size=16)
    first = numpy_statistics(model, x, 16, ["batch"] * 3)
    expected = numpy_statistics(model, x, 16, [first[0], "batch", "batch"])
    got = recalibrated(model)
    assert_statistics(got, expected, **TOLERANCE)
    exact = exact_statistics(model, x)
    assert_statistics(got[:2], exact[:2], **TOLERANCE)
    # The third layer is the batch estimate, close to the exact one: its
    # means within 0.1 standard deviations, its variances within 20% (batches
    # of 16 rows: dense layers see few values per batch).
    mean, variance = got[2]
    mean_ref, variance_ref = exact[2]
    assert np.max(np.abs(mean - mean_ref) / np.sqrt(variance_ref)) < 0.1
    np.testing.assert_allclose(variance, variance_ref, rtol=0.2, atol=1e-3)


def test_layerwise_is_exact(x):
    model = chain_model()
    bn_keras.recalibrate(model, x, batch_size=16, method="layerwise")
    assert_statistics(
        recalibrated(model), exact_statistics(model, x), **TOLERANCE
    )


def test_a_shared_layer_pools_every_call(rng):
    shared = keras.layers.BatchNormalization(name="shared")
    inputs = keras.Input((3,))
    model = keras.Model(inputs, [shared(inputs), shared(inputs * 3.0 + 1.0)])
    x = rng.normal(size=(40, 3)).astype("float32")
    bn_keras.recalibrate(model, x, batch_size=8)
    both = np.concatenate([x, x * 3.0 + 1.0]).astype(np.float64)
    np.testing.assert_allclose(shared.moving_mean, both.mean(0), **TOLERANCE)
    np.testing.assert_allclose(shared.moving_variance, both.var(0), **TOLERANCE)


def test_a_pass_measures_the_layers_that_normalize_by_their_batch(rng):
    """What a pass of the shared runner returns, per layer: the moments of
    the layers normalized by their batch (a layer in inference measures
    nothing), and each call's batch means, batch by batch."""
    from bn_keras.models._passes import BatchNormRunner

    shared = keras.layers.BatchNormalization(name="shared")
    alone = keras.layers.BatchNormalization(name="alone")
    inputs = keras.Input((3,))
    model = keras.Model(
        inputs, [alone(shared(inputs)), shared(inputs * 3.0 + 1.0)]
    )
    x = rng.normal(size=(40, 3)).astype("float32")
    batches = [x[i : i + 8] for i in range(0, 40, 8)]
    runner = BatchNormRunner(model, [shared, alone])
    result = runner.run(batches, ["batch", "inference"], keep=("means",))
    assert result.called == [True, True] and result.num_batches == 5
    assert result.pooled[1] is None and result.batch_means[1] is None
    both = np.concatenate([x, x * 3.0 + 1.0]).astype(np.float64)
    np.testing.assert_allclose(result.pooled[0].mean, both.mean(0), **TOLERANCE)
    np.testing.assert_allclose(
        result.pooled[0].variance, both.var(0), **TOLERANCE
    )
    # Two calls a batch: the first call's mean, then the second's.
    expected = [
        b.mean(0) for batch in batches for b in (batch, batch * 3.0 + 1.0)
    ]
    np.testing.assert_allclose(result.batch_means[0], expected, **TOLERANCE)
    nothing = runner.run(batches, "inference")
    assert nothing.pooled == [None, None] and nothing.called == [True, True]


def test_mixed_precision_statistics_stay_float32(x):
    keras.config.set_dtype_policy("mixed_float16")
    model = chain_model()
    bn_keras.recalibrate(model, x, batch_size=16, method="one-pass")
    first = bn_keras.find_batchnorm(model)[0]
    assert first.moving_mean.dtype == "float32"
    h = x.astype(np.float64) @ weights(model)[0][0][0] + weights(model)[0][0][1]
    # The first dense layer computes in float16.
    np.testing.assert_allclose(
        first.moving_mean, h.mean(0), rtol=1e-2, atol=1e-2
    )


def test_unknown_method_is_an_error(x):
    with pytest.raises(ValueError, match=re.escape("Received: method='fast'")):
        bn_keras.recalibrate(chain_model(), x, method="fast")


class Residual(keras.Model):
    """A subclassed model: no graph to read."""

    def __init__(self):
        super().__init__()
        self.bn = keras.layers.BatchNormalization()

    def call(self, x):
        return x + self.bn(x)


def test_depths_through_nesting_residuals_and_blocks():
    inputs = keras.Input((4,))
    a = keras.layers.BatchNormalization(name="a")(inputs)
    b = keras.layers.BatchNormalization(name="b")(keras.layers.Dense(4)(inputs))
    c = keras.layers.BatchNormalization(name="c")(keras.layers.Add()([a, b]))
    inner = keras.Sequential(
        [
            keras.Input((4,)),
            bn_keras.layers.BNBlock(keras.layers.Dense(4), name="block"),
            keras.layers.BatchNormalization(name="d"),
        ],
        name="inner",
    )
    subclassed = Residual()
    e = keras.layers.BatchNormalization(name="e")(subclassed(inner(c)))
    model = keras.Model(inputs, [e, keras.layers.Dense(2)(b)])
    depths = batchnorm_depths(model)
    named = {
        layer.name: depths[id(layer)]
        for layer in bn_keras.find_batchnorm(model)
    }
    block_bn = inner.get_layer("block").normalization.name
    assert named == {
        "a": 1,
        "b": 1,
        "c": 2,
        block_bn: 3,
        "d": 4,
        subclassed.bn.name: None,
        "e": None,
    }


def test_raw_ops_and_list_inputs_default_equals_layerwise(rng):
    """Two inputs, a raw tensor operation between the BN layers: the
    default is exact at depth 2, as the layer-by-layer algorithm."""
    a, b = keras.Input((3,)), keras.Input((2,))
    h = keras.layers.Concatenate()([a, b])
    h = keras.layers.BatchNormalization(name="first")(h)
    h = keras.ops.tanh(h * 2.0 + 1.0)  # raw operations
    h = keras.layers.Dense(4, name="dense")(h)
    h = keras.layers.BatchNormalization(name="second")(h)
    model = keras.Model([a, b], h)
    data = [
        (rng.normal(size=(64, 3)) * 3 + 1).astype("float32"),
        rng.normal(size=(64, 2)).astype("float32"),
    ]
    assert [
        batchnorm_depths(model)[id(layer)]
        for layer in bn_keras.find_batchnorm(model)
    ] == [1, 2]
    bn_keras.recalibrate(model, data, batch_size=16)
    got = recalibrated(model)
    reference = keras.models.clone_model(model)
    reference.set_weights(model.get_weights())
    bn_keras.recalibrate(reference, data, batch_size=16, method="layerwise")
    assert_statistics(got, recalibrated(reference), **TOLERANCE)
    # Not the initial statistics: the check can fail.
    assert np.abs(got[0][0]).max() > 0.5
