"""`BatchNormMonitor` on a layer with cumulative statistics
(`renorm_momentum=None`): the renorm figures recover the batch from the
cumulative update."""

import keras
import numpy as np
import pytest

import bn_keras
from tests.callbacks.helpers import read_scalars

BOUNDS = {"rmax": 1.15, "rmin": 1 / 1.15, "dmax": 0.3}
EPSILON = 1e-3


def expected_fractions(x, batch_size):
    """The clipped fraction of each training batch, from the data alone:
    r and d against the statistics of every sample before the batch; the
    first batch uses r = 1, d = 0 (nothing clipped)."""
    fractions = []
    for start in range(0, len(x), batch_size):
        batch = x[start : start + batch_size].astype(np.float64)
        if start == 0:
            fractions.append(0.0)
            continue
        before = x[:start].astype(np.float64)
        sigma = np.sqrt(before.var(axis=0) + EPSILON)
        r = np.sqrt(batch.var(axis=0) + EPSILON) / sigma
        d = (batch.mean(axis=0) - before.mean(axis=0)) / sigma
        clipped = (
            (r > BOUNDS["rmax"])
            | (r < BOUNDS["rmin"])
            | (np.abs(d) > BOUNDS["dmax"])
        )
        fractions.append(clipped.mean())
    return fractions


def test_clipped_fraction_with_cumulative_renorm_statistics(tmp_path):
    rng = np.random.default_rng(0)
    features, batch_size, batches = 16, 16, 6
    x = rng.normal(3.0, 2.0, size=(batches * batch_size, features))
    x = x.astype("float32")
    y = rng.normal(size=(len(x), 1)).astype("float32")
    inputs = keras.Input((features,))
    normalized = bn_keras.layers.BatchNormalization(
        momentum=None,
        renorm=True,
        renorm_momentum=None,
        renorm_clipping=BOUNDS,
        center=False,
        scale=False,
        name="input_bn",
    )(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1)(normalized))
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    monitor = bn_keras.callbacks.BatchNormMonitor(tmp_path, update_freq=1)
    model.fit(
        x,
        y,
        batch_size=batch_size,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[monitor],
    )
    scalars = read_scalars(monitor.run_dir)
    (tag,) = [t for t in scalars if t.endswith("renorm/clipped_fraction")]
    expected = expected_fractions(x, batch_size)
    assert sorted(scalars[tag]) == list(range(1, batches + 1))
    for step, fraction in enumerate(expected, start=1):
        assert scalars[tag][step] == pytest.approx(fraction, abs=1e-6), step
    # The figures discriminate: some channels clipped, not all.
    assert 0 < max(expected[1:]) and min(expected[1:]) < 1
