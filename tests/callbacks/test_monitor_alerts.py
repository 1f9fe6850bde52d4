"""`BatchNormMonitor`'s alerts on models built to have a fault, in the
words of `bn-keras doctor`, and none on healthy ones."""

import warnings

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits

import bn_keras
from bn_keras._statistics import read_statistics
from bn_keras.callbacks._figures import window_statistics
from bn_keras.diagnosis import _training_detectors
from bn_keras.diagnosis._detectors import REMEDY_NOISY
from bn_keras.diagnosis._detectors import REMEDY_RECALIBRATE
from tests.callbacks.helpers import read_events
from tests.callbacks.helpers import read_scalars
from tests.callbacks.helpers import run_dir


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's digits as they ship (pixels 0 to 16), split in two."""
    data = load_digits()
    x, y = data.data.astype("float32"), data.target
    return (x[:1200], y[:1200]), (x[1200:], y[1200:])


def standardized(x, reference):
    return (x - reference.mean(0)) / (reference.std(0) + 1.0)


def dense_model(learning_rate=0.001, **bn_kwargs):
    """Dense, BN, ReLU, Dense: the BN normalizes the first Dense layer."""
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(32, use_bias=False, name="hidden"),
            bn_keras.layers.BatchNormalization(name="bn", **bn_kwargs),
            keras.layers.ReLU(),
            keras.layers.Dense(10),
        ]
    )
    model.compile(
        keras.optimizers.Adam(learning_rate),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def fit_monitored(model, log_dir, train, epochs, batch_size, **monitor):
    x, y = train
    return model.fit(
        x,
        y,
        batch_size=batch_size,
        epochs=epochs,
        verbose=0,
        callbacks=[bn_keras.callbacks.BatchNormMonitor(log_dir, **monitor)],
    )


def last_text(log_dir):
    texts = read_events(run_dir(log_dir))["batchnorm/layers"]
    return texts[max(texts)].item().decode()


def alert_lines(text):
    return [line for line in text.splitlines() if line.startswith("- **")]


# -- what the alerts are measured on ----------------------------------------


@pytest.mark.parametrize("renorm", [False, True])
def test_window_statistics_are_the_batches_weighted_mean(rng, renorm):
    """The training batches' mean and variance, recovered from the moving
    statistics, against the batches themselves (a BN on the raw inputs,
    batches in order): weighted `(1 - m) * m**j` as the moving average
    weighs them, `j` steps before the last."""
    x = (rng.normal(size=(96, 4)) * [1, 2, 0.5, 3] + [0, 1, -2, 5]).astype(
        "float32"
    )
    layer = bn_keras.layers.BatchNormalization(momentum=0.8, renorm=renorm)
    model = keras.Sequential([keras.Input((4,)), layer, keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.01), "mse")
    before = read_statistics(layer)
    model.fit(x, x[:, :1], batch_size=16, shuffle=False, verbose=0)
    window = window_statistics(layer, read_statistics(layer), before, 6)

    batches = x.reshape(6, 16, 4).astype(np.float64)
    weights = 0.2 * 0.8 ** np.arange(5, -1, -1)
    weights /= weights.sum()
    epsilon = np.float64(np.float32(layer.epsilon))
    variance = weights @ batches.var(axis=1)
    if renorm:  # the moving average of sqrt(variance + epsilon)
        stddev = weights @ np.sqrt(batches.var(axis=1) + epsilon)
        variance = stddev**2 - epsilon
    np.testing.assert_allclose(
        window.mean, weights @ batches.mean(axis=1), rtol=1e-4
    )
    np.testing.assert_allclose(window.variance, variance, rtol=1e-4)
    assert window.kept.all() and window.steps == 6
    # Nothing to recover without a step, or from a frozen average.
    assert window_statistics(layer, before, before, 0) is None
    assert window_statistics(layer, read_statistics(layer), {}, 6) is None
    layer.trainable = False
    assert window_statistics(layer, read_statistics(layer), before, 6) is None


# -- faults ------------------------------------------------------------------


def test_stale_statistics_raise_an_alert_naming_the_layer_and_remedy(
    tmp_path, digits
):
    """The issue's first case: training fits while validation stays low,
    because inference normalizes with moving statistics that barely left
    their initial values (momentum 0.999, 19 steps an epoch, raw
    pixels)."""
    train, (x_val, y_val) = digits
    model = dense_model(0.01, momentum=0.999)
    history = fit_monitored(
        model, tmp_path, train, 3, 64, probe_data=x_val[:64]
    )
    scalars = read_scalars(run_dir(tmp_path))
    assert scalars["alerts/statistics-mismatch"] == {1: 1.0, 2: 1.0, 3: 1.0}
    assert scalars["alerts/unhealthy_layers"] == {1: 1.0, 2: 1.0, 3: 1.0}
    # Training fits (0.97) while inference lags (0.78), and precise
    # statistics fix what the alert says is wrong (0.91).
    _, as_is = model.evaluate(x_val, y_val, verbose=0)
    bn_keras.recalibrate(model, train[0])
    _, precise = model.evaluate(x_val, y_val, verbose=0)
    assert history.history["accuracy"][-1] > as_is + 0.15
    assert precise > as_is + 0.1
    text = last_text(tmp_path)
    assert "| warning | statistics-mismatch | bn01-hidden |" in text
    (line,) = alert_lines(text)
    assert line.startswith(
        "- **statistics-mismatch** (warning): The moving statistics of "
        "bn01-hidden (bn) lag behind the training batches: over the last 19 "
        "training steps, its moving mean was"
    )
    assert "(momentum 0.999: each step moves the statistics 0.1%" in line
    assert line.endswith(f"*What to do:* {_training_detectors.REMEDY_LAGGING}")
    assert "Lower the momentum" in line


def test_the_same_model_with_a_faster_momentum_has_no_alert(tmp_path, digits):
    train, (x_val, _) = digits
    fit_monitored(
        dense_model(momentum=0.9), tmp_path, train, 3, 64, probe_data=x_val[:64]
    )
    scalars = read_scalars(run_dir(tmp_path))
    assert scalars["alerts/unhealthy_layers"] == {1: 0.0, 2: 0.0, 3: 0.0}
    assert "**Alerts**\n\nNo alerts." in last_text(tmp_path)


def test_a_probe_unlike_training_is_a_mismatch_on_the_probe(tmp_path, digits):
    """Statistics that follow the training batches, and a probe batch from
    other data (shifted by 4 standard deviations): the probe gap, beyond
    batch noise, names the layer."""
    (x, y), (x_val, _) = digits
    train = (standardized(x, x), y)
    probe = standardized(x_val[:64], x) + 4.0
    fit_monitored(
        dense_model(momentum=0.9), tmp_path, train, 2, 64, probe_data=probe
    )
    scalars = read_scalars(run_dir(tmp_path))
    assert scalars["alerts/statistics-mismatch"] == {1: 1.0, 2: 1.0}
    assert min(scalars["bn01-hidden/1_probe_gap"].values()) > 0.5
    (line,) = alert_lines(last_text(tmp_path))
    assert line.startswith(
        "- **statistics-mismatch** (warning): On the probe batch, bn01-hidden "
        "(bn) normalizes far from how inference does"
    )
    assert "or the probe comes from other data than training" in line
    assert line.endswith(f"*What to do:* {REMEDY_RECALIBRATE}")


def renorm_model(clipping, renorm_momentum=0.99):
    return dense_model(
        renorm=True, renorm_clipping=clipping, renorm_momentum=renorm_momentum
    )


def small_standardized(digits, n=256):
    (x, y), _ = digits
    return standardized(x[:n], x), y[:n]


def test_saturated_renorm_clipping_raises_an_alert(tmp_path, digits):
    """The issue's second case: renorm's r and d clipped at every write,
    the layer training as plain BN (`rmax=1`, `dmax=0`)."""
    train = small_standardized(digits)
    fit_monitored(
        renorm_model({"rmax": 1.0, "dmax": 0.0}), tmp_path, train, 6, 64
    )
    scalars = read_scalars(run_dir(tmp_path))
    clipped = scalars["bn01-hidden/renorm/clipped_fraction"]
    assert min(clipped.values()) == 1.0
    # From the fifth write in a row on: these bounds never relax.
    assert scalars["alerts/renorm-clipping-saturated"] == {5: 1.0, 6: 1.0}
    text = last_text(tmp_path)
    assert "| warning | renorm-clipping-saturated | bn01-hidden |" in text
    (line,) = alert_lines(text)
    assert (
        "- **renorm-clipping-saturated** (warning): Batch renormalization in "
        "bn01-hidden (bn) had r or d clipped on nearly every channel in each "
        "of the last 5 writes: rmax 1 and dmax 0 allow no correction, so "
        "bn01-hidden (bn) trains as plain batch normalization. *What to do:* "
        "Give r and d room"
    ) in line
    assert "bn_keras.layers.RenormClipping().scaled(total_steps)" in line


@pytest.mark.parametrize("warmup, alerted", [(8, False), (1000, True)])
def test_a_schedule_warming_up_beyond_the_fit_is_saturated(
    tmp_path, digits, warmup, alerted
):
    """A `RenormClipping` warm-up keeps `rmax = 1`, `dmax = 0` (everything
    clipped) by design: an alert only when it lasts past the fit's end
    (24 steps here), when the layer trains as plain BN throughout."""
    schedule = bn_keras.layers.RenormClipping(
        warmup_steps=warmup, rmax_steps=warmup + 4, dmax_steps=warmup + 4
    )
    train = small_standardized(digits)
    fit_monitored(renorm_model(schedule, 0.5), tmp_path, train, 6, 64)
    scalars = read_scalars(run_dir(tmp_path))
    clipped = scalars["bn01-hidden/renorm/clipped_fraction"]
    assert [clipped[epoch] for epoch in (1, 2)] == [1.0, 1.0]  # warm-up
    if not alerted:
        assert "alerts/renorm-clipping-saturated" not in scalars
        assert min(clipped[epoch] for epoch in (4, 5, 6)) < 0.9
        return
    assert scalars["alerts/renorm-clipping-saturated"] == {5: 1.0, 6: 1.0}
    assert (
        "the RenormClipping schedule of bn01-hidden (bn) keeps rmax 1 and "
        "dmax 0 until step 1000, after this fit's last step (24)"
    ) in last_text(tmp_path)


def test_tiny_ghost_batches_are_noisy_batch_statistics(tmp_path, digits):
    train = small_standardized(digits)
    fit_monitored(
        dense_model(virtual_batch_size=2),
        tmp_path,
        train,
        2,
        32,
        probe_data=train[0][:32],
    )
    scalars = read_scalars(run_dir(tmp_path))
    assert scalars["alerts/noisy-batch-statistics"] == {1: 1.0, 2: 1.0}
    # Batch noise alone: about sqrt(1.5 / 2) of the output's spread.
    for gap in scalars["bn01-hidden/1_probe_gap"].values():
        assert 0.5 <= gap < 3 * np.sqrt(0.75)
    (line,) = alert_lines(last_text(tmp_path))
    assert line.startswith(
        "- **noisy-batch-statistics** (warning): On the probe batch, "
        "bn01-hidden (bn) normalizes ghost batches of only 2 values per "
        "channel (2 samples): normalized so, as in training, its output "
        "differs from inference's by"
    )
    assert line.endswith(f"*What to do:* {REMEDY_NOISY}")


def test_an_alert_that_cleared_stays_in_the_text_summary(tmp_path, digits):
    """Momentum 0.98 on raw pixels: the statistics lag in the first epochs
    (19 steps each) only. The summary written as training ends says so."""
    train, _ = digits
    fit_monitored(dense_model(momentum=0.98), tmp_path, train, 4, 64)
    counts = read_scalars(run_dir(tmp_path))["alerts/statistics-mismatch"]
    fired = [epoch for epoch, count in sorted(counts.items()) if count]
    assert fired == list(range(1, len(fired) + 1)) and counts[4] == 0.0
    text = last_text(tmp_path)
    assert (
        "**Alerts**\n\nNo alerts.\n\nEarlier in training, cleared since:"
        in (text)
    )
    epochs = f"epochs 1-{fired[-1]}" if len(fired) > 1 else "epoch 1"
    assert f"| {epochs} | warning | statistics-mismatch | bn01-hidden |" in text
    (line,) = alert_lines(text)
    assert line.startswith(f"- **statistics-mismatch** (warning, {epochs}")
    assert (
        "The moving statistics of bn01-hidden (bn) lag behind the training "
        "batches"
    ) in line


# -- healthy runs --------------------------------------------------------------


def compiled(layers):
    model = keras.Sequential(layers)
    model.compile(
        "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    return model


HEALTHY = {
    "plain": lambda: dense_model(),
    "keras": lambda: compiled(
        [
            keras.Input((64,)),
            keras.layers.Dense(32, use_bias=False),
            keras.layers.BatchNormalization(momentum=0.9),
            keras.layers.ReLU(),
            keras.layers.Dense(10),
        ]
    ),
    "ghost": lambda: dense_model(virtual_batch_size=16),
    "renorm": lambda: renorm_model(
        bn_keras.layers.RenormClipping().scaled(60), renorm_momentum=0.9
    ),
    "conv": lambda: compiled(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, use_bias=False),
            bn_keras.layers.BatchNormalization(momentum=0.9),
            keras.layers.ReLU(),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    ),
}


@pytest.mark.parametrize("kind", sorted(HEALTHY))
def test_healthy_runs_have_no_warning(tmp_path, digits, kind):
    """No alert for statistical noise: models whose statistics keep up,
    at batch 32 or 64, probed on held-out data."""
    (x, y), (x_val, _) = digits
    x, x_val = standardized(x, x), standardized(x_val, x)
    if kind == "conv":
        x, x_val = x.reshape(-1, 8, 8, 1), x_val.reshape(-1, 8, 8, 1)
    model = HEALTHY[kind]()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        fit_monitored(model, tmp_path, (x, y), 3, 64, probe_data=x_val[:64])
    scalars = read_scalars(run_dir(tmp_path))
    assert scalars["alerts/unhealthy_layers"] == {1: 0.0, 2: 0.0, 3: 0.0}
    severities = [
        line.split("(")[1].split(")")[0]
        for line in alert_lines(last_text(tmp_path))
    ]
    assert set(severities) <= {"info"}, last_text(tmp_path)


# -- renorm_momentum=1.0 -------------------------------------------------------


def test_frozen_renorm_statistics_write_no_clipped_fraction(tmp_path, rng):
    """With `renorm_momentum=1.0` the renorm statistics never move: the
    batch's cannot be recovered from their update (it would be 0 / 0)."""
    x = rng.normal(size=(64, 4)).astype("float32")
    model = keras.Sequential(
        [
            keras.Input((4,)),
            bn_keras.layers.BatchNormalization(
                renorm=True,
                renorm_clipping={"rmax": 3.0, "dmax": 5.0},
                renorm_momentum=1.0,
                name="frozen",
            ),
            keras.layers.Dense(1),
        ]
    )
    model.compile("sgd", "mse")
    monitor = bn_keras.callbacks.BatchNormMonitor(tmp_path, probe_data=x[:16])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        model.fit(
            x, x[:, :1], batch_size=16, epochs=2, verbose=0, callbacks=[monitor]
        )
    scalars = read_scalars(run_dir(tmp_path))
    assert "bn00-input/renorm/clipped_fraction" not in scalars
    assert "bn00-input/renorm/rmax" in scalars
    # The probe's clipping is still measured (against the frozen
    # statistics: 0 and 1, far from these inputs' only in scale).
    probe = scalars["bn00-input/probe/clipped_fraction"]
    assert all(np.isfinite(v) for v in probe.values())
