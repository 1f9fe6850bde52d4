import copy as copy_module
import json
import os
import re
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest

import bn_keras
from tests.callbacks.helpers import BatchCounter
from tests.callbacks.helpers import Snapshots
from tests.callbacks.helpers import assert_figures_close
from tests.callbacks.helpers import expected_figures
from tests.callbacks.helpers import read_events
from tests.callbacks.helpers import read_layout
from tests.callbacks.helpers import read_scalars
from tests.callbacks.helpers import run_dir

HISTOGRAM_KEYS = ("gamma", "beta", "moving_mean", "moving_variance")

#: The tag prefixes of `three_kinds_model`'s layers: what each normalizes
#: (the input; the first Dense; the nested model's Dense, with the name of
#: the model), numbered among the layers with weights in forward order.
THREE_KINDS_TAGS = {
    "keras_bn": "bn00-input",
    "renorm": "bn01-dense",
    "ghost": "bn02-inner.dense",
}


class KillFirstTwo(keras.constraints.Constraint):
    """Keeps the first two channels' gamma at zero: dead channels."""

    def __call__(self, w):
        return w * keras.ops.convert_to_tensor([0.0, 0.0, 1.0, 1.0, 1.0])


def three_kinds_model(gamma_constraint=None):
    """Keras's BN, a nested ghost BN and a renorm BN with a fast schedule."""
    inner = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(6),
            bn_keras.layers.BatchNormalization(
                virtual_batch_size=8, momentum=0.8, name="ghost"
            ),
        ],
        name="inner",
    )
    model = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.BatchNormalization(
                momentum=0.7, gamma_constraint=gamma_constraint, name="keras_bn"
            ),
            keras.layers.Dense(8),
            bn_keras.layers.BatchRenormalization(
                momentum=0.9,
                renorm_momentum=0.5,
                renorm_clipping=bn_keras.layers.RenormClipping(
                    rmax=2.0,
                    dmax=1.0,
                    warmup_steps=2,
                    rmax_steps=10,
                    dmax_steps=6,
                ),
                name="renorm",
            ),
            keras.layers.ReLU(),
            inner,
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    return model


def regression_data(rng, n=128, features=5):
    x = (rng.normal(size=(n, features)) * [1, 2, 3, 0.5, 4] + 2).astype(
        "float32"
    )
    y = (x @ rng.normal(size=(features, 1))).astype("float32")
    return x, y


def test_epoch_figures_match_weight_snapshots(tmp_path, rng):
    x, y = regression_data(rng)
    model = three_kinds_model(gamma_constraint=KillFirstTwo())
    layers = bn_keras.find_batchnorm(model)
    assert [layer.name for layer in layers] == ["keras_bn", "renorm", "ghost"]
    snapshots = Snapshots(layers)
    monitor = bn_keras.callbacks.BatchNormMonitor(tmp_path)
    history = model.fit(
        x,
        y,
        batch_size=32,
        epochs=3,
        verbose=0,
        callbacks=[snapshots, monitor],
    )
    scalars = read_scalars(run_dir(tmp_path))
    events = read_events(run_dir(tmp_path))
    max_drift, min_variance = [], []
    for epoch in range(3):
        previous = (
            snapshots.start if epoch == 0 else snapshots.epochs[epoch - 1]
        )
        drifts = []
        for layer in layers:
            now = snapshots.epochs[epoch][layer.name]
            expected = expected_figures(
                now,
                previous[layer.name],
                snapshots.start[layer.name],
                layer.epsilon,
            )
            tag = THREE_KINDS_TAGS[layer.name]
            # Epoch figures at the epoch's number, from 1.
            assert_figures_close(scalars, tag, epoch + 1, expected)
            drifts.append(expected["2_mean_drift_in_std"])
            for key in HISTOGRAM_KEYS:
                buckets = events[f"histograms/{tag}/{key}"][epoch + 1]
                assert buckets.shape == (30, 3)
                assert buckets[:, 2].sum() == now[key].size
                np.testing.assert_allclose(
                    buckets[0, 0], now[key].min(), rtol=1e-6
                )
                np.testing.assert_allclose(
                    buckets[-1, 1], now[key].max(), rtol=1e-6
                )
        max_drift.append(max(drifts))
        min_variance.append(
            min(
                s["moving_variance"].min()
                for s in snapshots.epochs[epoch].values()
            )
        )
        np.testing.assert_allclose(
            scalars["batchnorm/max_drift_in_std"][epoch + 1],
            max_drift[-1],
            rtol=2e-5,
        )
    # The dead channels are counted, and alerted at every epoch end (one
    # layer), and drift moved.
    assert scalars["bn00-input/gamma/dead_fraction"][3] == pytest.approx(0.4)
    assert scalars["alerts/dead-channels"] == {1: 1.0, 2: 1.0, 3: 1.0}
    assert scalars["bn00-input/moving_mean/drift_from_start"][3] > 0.5
    # The same figures reach `logs`, hence History.
    np.testing.assert_allclose(
        history.history["bn_max_drift_in_std"], max_drift, rtol=1e-6
    )
    np.testing.assert_allclose(
        history.history["bn_min_moving_variance"], min_variance, rtol=1e-6
    )
    assert history.history["bn_nonfinite_layers"] == [0.0, 0.0, 0.0]
    # The renorm schedule's bounds at the layer's step (4 batches a epoch).
    schedule = layers[1].renorm_schedule
    for epoch in range(3):
        bounds = schedule(4 * (epoch + 1))
        assert scalars["bn01-dense/renorm/rmax"][epoch + 1] == pytest.approx(
            bounds["rmax"]
        )
        assert scalars["bn01-dense/renorm/dmax"][epoch + 1] == pytest.approx(
            bounds["dmax"]
        )
    assert scalars["bn01-dense/renorm/rmax"][3] > 1.5


def chart_tags(chart, tags):
    """The tags of `tags` that a custom-scalars chart shows."""
    if chart.HasField("margin"):
        shown = set()
        for series in chart.margin.series:
            shown |= {series.value, series.lower, series.upper}
        return shown & tags
    # A line chart draws one tag: each run is one line of its colour.
    (pattern,) = chart.multiline.tag
    hits = {t for t in tags if re.search(pattern, t)}
    assert len(hits) == 1, (pattern, hits)
    return hits


#: Figures that stay constant unless something is wrong: no chart, their
#: alerts say when they are not zero.
ALERTED = ("gamma/dead_fraction", "constant_channels")


def test_layout_opens_on_an_overview_then_one_category_per_layer(tmp_path, rng):
    x, y = regression_data(rng, n=64)
    model = three_kinds_model()
    monitor = bn_keras.callbacks.BatchNormMonitor(tmp_path, probe_data=x[:16])
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[monitor])
    layout = read_layout(run_dir(tmp_path))
    assert [c.title for c in layout.category] == [
        "Overview",
        "bn00-input",
        "bn01-dense",
        "bn02-inner.dense",
    ]
    # Only the Overview is open when the dashboard opens.
    assert [c.closed for c in layout.category] == [False, True, True, True]
    tags = set(read_scalars(run_dir(tmp_path)))
    overview, *layers = layout.category
    # The loss (no accuracy: the model is compiled without it), on the
    # training data since `fit` has no validation data, then the
    # model-wide figures, then the alert that fired: after two steps at
    # momentum 0.7 the input's BN (inputs of mean 2, moving mean from 0)
    # still lags behind the batches.
    assert [list(c.multiline.tag) for c in overview.chart] == [
        ["^alerts/unhealthy_layers$"],
        ["^epoch/loss$"],
        ["^batchnorm/max_probe_gap$"],
        ["^batchnorm/max_drift_in_std$"],
        ["^batchnorm/min_moving_variance$"],
        ["^alerts/statistics\\-mismatch$"],
    ]
    for category in layers:
        tag = category.title
        shown = set()
        for chart in category.chart:
            shown |= chart_tags(chart, tags)
        # Every scalar of the layer is on one of its charts, but those that
        # alerts stand for.
        assert shown == {
            t
            for t in tags
            if t.startswith(tag + "/") and not t.endswith(ALERTED)
        }
        # The probe gap (mean, then largest channel) and the drift in std
        # units come first.
        assert [list(c.multiline.tag) for c in category.chart[:3]] == [
            [f"^{re.escape(tag)}/1_probe_gap$"],
            [f"^{re.escape(tag)}/probe/gap_max$"],
            [f"^{re.escape(tag)}/2_mean_drift_in_std$"],
        ]
        # The moving variance, gamma and beta: a band from min to max
        # around the mean, last (TensorBoard shows them after the line
        # charts, in reverse order: the variance, gamma, beta).
        bands = [
            (s.value, s.lower, s.upper)
            for c in category.chart[-3:]
            if c.HasField("margin")
            for s in c.margin.series
        ]
        assert bands == [
            (f"{tag}/{w}/mean", f"{tag}/{w}/min", f"{tag}/{w}/max")
            for w in ("beta", "gamma", "moving_variance")
        ]
    renorm_tags = {t for t in tags if t.startswith("bn01-dense/renorm/")}
    assert renorm_tags == {
        "bn01-dense/renorm/rmax",
        "bn01-dense/renorm/dmax",
        "bn01-dense/renorm/clipped_fraction",
    }


def accuracy_model():
    model = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(4),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(2),
        ]
    )
    model.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy", keras.metrics.SparseTopKCategoricalAccuracy(1)],
    )
    return model


def test_overview_charts_the_accuracy_the_model_is_compiled_with(tmp_path, rng):
    """Alone, the monitor writes Keras's epoch metrics in its run, a chart
    each (validation, then training), at the epoch's number from 1."""
    x = rng.normal(size=(64, 5)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    history = accuracy_model().fit(
        x,
        y,
        epochs=2,
        verbose=0,
        validation_split=0.25,
        callbacks=[bn_keras.callbacks.BatchNormMonitor(tmp_path)],
    )
    overview = read_layout(run_dir(tmp_path)).category[0]
    patterns = [list(c.multiline.tag) for c in overview.chart][1:]
    assert patterns[:6] == [
        ["^epoch/val_accuracy$"],
        ["^epoch/val_sparse_top_k_categorical_accuracy$"],
        ["^epoch/val_loss$"],
        ["^epoch/accuracy$"],
        ["^epoch/sparse_top_k_categorical_accuracy$"],
        ["^epoch/loss$"],
    ]
    ours = read_scalars(run_dir(tmp_path))
    for (pattern,) in patterns[:6]:
        name = pattern[len("^epoch/") : -1]
        assert sorted(ours[f"epoch/{name}"]) == [1, 2]
        np.testing.assert_allclose(
            [ours[f"epoch/{name}"][step] for step in (1, 2)],
            history.history[name],
            rtol=1e-6,
        )


def test_beside_keras_tensorboard_nothing_is_written_twice(tmp_path, rng):
    """With Keras's TensorBoard in the same folder, the Overview draws its
    `epoch_<name>` tags (its train and validation runs side by side) and
    the monitor writes neither epoch metrics nor histograms of its own;
    its epoch figures sit at Keras's steps (from 0), with
    `update_freq=2` too."""
    x = rng.normal(size=(64, 5)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    accuracy_model().fit(
        x,
        y,
        epochs=2,
        batch_size=16,
        verbose=0,
        validation_split=0.25,
        callbacks=[
            keras.callbacks.TensorBoard(tmp_path, histogram_freq=1),
            bn_keras.callbacks.BatchNormMonitor(
                tmp_path, update_freq=2, objective="val_accuracy"
            ),
        ],
    )
    overview = read_layout(run_dir(tmp_path)).category[0]
    patterns = [list(c.multiline.tag) for c in overview.chart]
    assert patterns[:5] == [
        ["^alerts/unhealthy_layers$"],
        ["^epoch/best_val_accuracy$"],
        ["^epoch_accuracy$"],
        ["^epoch_sparse_top_k_categorical_accuracy$"],
        ["^epoch_loss$"],
    ]
    events = read_events(run_dir(tmp_path))
    assert not [t for t in events if t.startswith(("epoch/val", "epoch/l"))]
    assert not [t for t in events if t.startswith("histograms/")]
    validation = read_scalars(os.path.join(tmp_path, "validation"))
    ours = read_scalars(run_dir(tmp_path))
    assert sorted(validation["epoch_accuracy"]) == [0, 1]
    assert sorted(ours["batchnorm/max_drift_in_std"]) == [0, 1]
    best = np.maximum.accumulate(
        [validation["epoch_accuracy"][step] for step in (0, 1)]
    )
    np.testing.assert_allclose(
        [ours["epoch/best_val_accuracy"][step] for step in (0, 1)],
        best,
        rtol=1e-6,
    )


@pytest.mark.parametrize(
    "epochs, expected", [(1, "^epoch/loss$"), (2, "^epoch/val_loss$")]
)
def test_overview_follows_validation_freq(tmp_path, rng, epochs, expected):
    """With `validation_freq=2` the first epoch ends without validation
    figures: the Overview shows training curves until the second brings
    them, then validation curves for good."""
    x, y = regression_data(rng, n=64)
    model = three_kinds_model()
    model.fit(
        x,
        y,
        batch_size=16,
        epochs=epochs,
        verbose=0,
        validation_split=0.25,
        validation_freq=2,
        callbacks=[bn_keras.callbacks.BatchNormMonitor(tmp_path)],
    )
    overview = read_layout(run_dir(tmp_path)).category[0]
    assert list(overview.chart[1].multiline.tag) == [expected]


def test_update_freq_in_batches(tmp_path, rng):
    x, y = regression_data(rng)  # 4 batches an epoch, 12 in all
    model = three_kinds_model()
    layers = bn_keras.find_batchnorm(model)
    snapshots = Snapshots(layers, every=1)
    monitor = bn_keras.callbacks.BatchNormMonitor(
        tmp_path, update_freq=5, histograms=False
    )
    history = model.fit(
        x,
        y,
        batch_size=32,
        epochs=3,
        verbose=0,
        callbacks=[snapshots, monitor],
    )
    scalars = read_scalars(run_dir(tmp_path))
    assert sorted(scalars["bn00-input/moving_mean/drift"]) == [5, 10]
    # The Overview's figures stay on the epoch axis.
    assert sorted(scalars["batchnorm/max_drift_in_std"]) == [1, 2, 3]
    assert not any(
        tag.startswith("histograms/") for tag in read_events(run_dir(tmp_path))
    )
    for step, previous in ((5, snapshots.start), (10, snapshots.batches[5])):
        for layer in layers:
            expected = expected_figures(
                snapshots.batches[step][layer.name],
                previous[layer.name],
                snapshots.start[layer.name],
                layer.epsilon,
            )
            assert_figures_close(
                scalars, THREE_KINDS_TAGS[layer.name], step, expected
            )
    # `logs` still get per-epoch figures: the drift over each epoch.
    for epoch, last_batch in enumerate((4, 8, 12)):
        start = (
            snapshots.start if epoch == 0 else snapshots.batches[last_batch - 4]
        )
        expected = max(
            expected_figures(
                snapshots.batches[last_batch][layer.name],
                start[layer.name],
                start[layer.name],
                layer.epsilon,
            )["2_mean_drift_in_std"]
            for layer in layers
        )
        np.testing.assert_allclose(
            history.history["bn_max_drift_in_std"][epoch], expected, rtol=1e-6
        )


def test_epoch_end_on_a_written_batch_reuses_that_write(tmp_path, rng):
    """With `update_freq=2` and 4 batches an epoch, the last batch of each
    epoch is written: the epoch end takes that reading and probe (nothing
    trains in between) instead of running the probe again."""
    x, y = regression_data(rng)  # 4 batches an epoch
    model = three_kinds_model()
    layers = bn_keras.find_batchnorm(model)
    snapshots = Snapshots(layers, every=1)
    monitor = bn_keras.callbacks.BatchNormMonitor(
        tmp_path, update_freq=2, histograms=False, probe_data=x[:16]
    )
    probes = []
    probe = monitor._probe
    monitor._probe = lambda: probes.append(1) or probe()
    history = model.fit(
        x,
        y,
        batch_size=32,
        epochs=2,
        verbose=0,
        callbacks=[snapshots, monitor],
    )
    assert len(probes) == 4  # the writes at batches 2, 4, 6 and 8
    scalars = read_scalars(run_dir(tmp_path))
    gaps = [scalars[f"{tag}/1_probe_gap"] for tag in THREE_KINDS_TAGS.values()]
    assert sorted(gaps[0]) == [2, 4, 6, 8]
    assert sorted(scalars["batchnorm/max_probe_gap"]) == [1, 2]
    for epoch, last_batch in enumerate((4, 8)):
        written = max(gap[last_batch] for gap in gaps)
        np.testing.assert_allclose(
            history.history["bn_max_probe_gap"][epoch], written, rtol=1e-6
        )
        np.testing.assert_allclose(
            scalars["batchnorm/max_probe_gap"][epoch + 1], written, rtol=1e-6
        )
        start = snapshots.start if epoch == 0 else snapshots.batches[4]
        expected = max(
            expected_figures(
                snapshots.batches[last_batch][layer.name],
                start[layer.name],
                start[layer.name],
                layer.epsilon,
            )["2_mean_drift_in_std"]
            for layer in layers
        )
        np.testing.assert_allclose(
            history.history["bn_max_drift_in_std"][epoch], expected, rtol=1e-6
        )


def renorm_pair_model(features):
    """Keras's renorm and ours (with a schedule) on the raw inputs."""
    inputs = keras.Input((features,))
    keras_renorm = keras.layers.BatchNormalization(
        renorm=True,
        renorm_momentum=0.6,
        renorm_clipping={"rmax": 1.15, "rmin": 1 / 1.15, "dmax": 0.3},
        name="keras_renorm",
    )
    our_renorm = bn_keras.layers.BatchRenormalization(
        renorm_momentum=0.6,
        renorm_clipping=bn_keras.layers.RenormClipping(
            rmax=1.3, dmax=0.4, warmup_steps=2, rmax_steps=6, dmax_steps=9
        ),
        name="our_renorm",
    )
    ghost_renorm = bn_keras.layers.BatchNormalization(
        renorm=True, virtual_batch_size=8, name="ghost_renorm"
    )
    merged = keras.layers.Concatenate()(
        [keras_renorm(inputs), our_renorm(inputs), ghost_renorm(inputs)]
    )
    model = keras.Model(inputs, keras.layers.Dense(1)(merged))
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    return model


#: Three BN layers of the input: one tag, then a letter for each other.
RENORM_PAIR_TAGS = {
    "keras_renorm": "bn00-input",
    "our_renorm": "bn00b-input",
    "ghost_renorm": "bn00c-input",
}


def clipped_fraction(batch, renorm_mean, renorm_stddev, epsilon, bounds):
    """From the batch itself: Keras's r and d, and which bounds clip them."""
    mean = batch.mean(axis=0)
    stddev = np.sqrt(batch.var(axis=0) + epsilon)
    denominator = np.maximum(renorm_stddev, np.sqrt(epsilon))
    r = stddev / denominator
    d = (mean - renorm_mean) / denominator
    clipped = (
        (r > bounds["rmax"])
        | (r < bounds["rmin"])
        | (np.abs(d) > bounds["dmax"])
    )
    return clipped.mean()


def test_renorm_clipped_fraction_of_last_batch(tmp_path, rng):
    features, batch_size = 32, 16
    x = rng.normal(size=(96, features)).astype("float32")
    y = rng.normal(size=(96, 1)).astype("float32")
    model = renorm_pair_model(features)
    layers = {layer.name: layer for layer in bn_keras.find_batchnorm(model)}
    snapshots = Snapshots(list(layers.values()))
    monitor = bn_keras.callbacks.BatchNormMonitor(tmp_path, probe_data=x[:20])
    model.fit(
        x,
        y,
        batch_size=batch_size,
        epochs=3,
        shuffle=False,
        verbose=0,
        callbacks=[snapshots, monitor],
    )
    scalars = read_scalars(run_dir(tmp_path))
    fractions = []
    for epoch in range(3):
        last = 6 * epoch + 5  # 6 batches an epoch
        batch = x[80:96].astype(np.float64)
        for name, step_bounds in (
            (
                "keras_renorm",
                lambda step: {"rmax": 1.15, "rmin": 1 / 1.15, "dmax": 0.3},
            ),
            ("our_renorm", layers["our_renorm"].renorm_schedule),
        ):
            before = snapshots.before_batch[last][name]
            expected = clipped_fraction(
                batch,
                before["renorm_mean"],
                before["renorm_stddev"],
                layers[name].epsilon,
                step_bounds(last),
            )
            assert scalars[f"{RENORM_PAIR_TAGS[name]}/renorm/clipped_fraction"][
                epoch + 1
            ] == pytest.approx(expected, abs=1e-6), (name, epoch)
            fractions.append(expected)
    # The figures discriminate: neither all clipped nor none.
    assert 0 < min(fractions) and max(fractions) < 1
    # Ghost renorm: r and d are per ghost batch and cannot be recovered from
    # the pooled update, so only the probe's figure is written.
    assert "bn00c-input/renorm/clipped_fraction" not in scalars
    assert sorted(scalars["bn00c-input/probe/clipped_fraction"]) == [1, 2, 3]


def ghost_renorm_transform(
    x, gamma, beta, renorm_mean, renorm_stddev, eps, size, bounds
):
    """NumPy training transform of ghost batch renormalization."""
    batch = len(x)
    ghosts = max(1, (batch - 2) // size + 1)
    ids = np.minimum(np.arange(batch) // size, ghosts - 1)
    y = np.empty_like(x)
    clipped = []
    for g in range(ghosts):
        chunk = x[ids == g]
        mean, var = chunk.mean(axis=0), chunk.var(axis=0)
        stddev = np.sqrt(var + eps)
        denominator = np.maximum(renorm_stddev, np.sqrt(eps))
        r = stddev / denominator
        d = (mean - renorm_mean) / denominator
        clipped.append(
            (r > bounds["rmax"])
            | (r < bounds["rmin"])
            | (np.abs(d) > bounds["dmax"])
        )
        r = np.clip(r, bounds["rmin"], bounds["rmax"])
        d = np.clip(d, -bounds["dmax"], bounds["dmax"])
        y[ids == g] = gamma * ((chunk - mean) / stddev * r + d) + beta
    return y, np.mean(clipped)


def test_probe_gap_matches_numpy_and_leaves_training_alone(tmp_path, rng):
    x = (rng.normal(size=(64, 4)) * 2 + 1).astype("float32")
    y = rng.normal(size=(64, 1)).astype("float32")
    probe = x[:20]  # ghost batches of 8, 8 and 4

    def build():
        inputs = keras.Input((4,))
        hidden = keras.layers.Dense(6, name="hidden")(inputs)
        ghost = bn_keras.layers.BatchNormalization(
            virtual_batch_size=8,
            renorm=True,
            momentum=0.5,
            renorm_clipping={"rmax": 1.2, "rmin": 0.8, "dmax": 0.2},
            name="ghost_renorm",
        )(hidden)
        plain = keras.layers.BatchNormalization(momentum=0.5, name="plain")(
            hidden
        )
        outputs = keras.layers.Dense(1, name="head")(
            keras.layers.Concatenate()([ghost, plain])
        )
        model = keras.Model(inputs, outputs)
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
        return model

    model, twin = build(), build()
    twin.set_weights(model.get_weights())
    layers = bn_keras.find_batchnorm(model)
    dense = model.get_layer("hidden")
    recorder = Snapshots(layers + [dense])
    monitor = bn_keras.callbacks.BatchNormMonitor(
        tmp_path, probe_data=(probe, y[:20])
    )
    history = model.fit(
        x,
        y,
        batch_size=16,
        epochs=2,
        shuffle=False,
        verbose=0,
        callbacks=[recorder, monitor],
    )
    twin.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    # The probe restores the statistics its training-mode call moved.
    for ours, theirs in zip(model.get_weights(), twin.get_weights()):
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)

    scalars = read_scalars(run_dir(tmp_path))
    tags = {"ghost_renorm": "bn01-hidden", "plain": "bn01b-hidden"}
    for epoch in range(2):
        weights = recorder.epochs[epoch]
        h = probe @ weights["hidden"]["kernel"] + weights["hidden"]["bias"]
        max_gap = 0.0
        for layer in layers:
            w = weights[layer.name]
            eps = layer.epsilon
            moving = (
                w["gamma"]
                * (h - w["moving_mean"])
                / np.sqrt(w["moving_variance"] + eps)
                + w["beta"]
            )
            if layer.renorm:
                batch_out, fraction = ghost_renorm_transform(
                    h,
                    w["gamma"],
                    w["beta"],
                    w["renorm_mean"],
                    w["renorm_stddev"],
                    eps,
                    8,
                    {"rmax": 1.2, "rmin": 0.8, "dmax": 0.2},
                )
                assert scalars[f"{tags[layer.name]}/probe/clipped_fraction"][
                    epoch + 1
                ] == pytest.approx(fraction, abs=1e-6)
            else:
                batch_out = (
                    w["gamma"] * (h - h.mean(0)) / np.sqrt(h.var(0) + eps)
                    + w["beta"]
                )
            gap = np.sqrt(
                np.mean((batch_out - moving) ** 2, axis=0)
            ) / batch_out.std(0)
            np.testing.assert_allclose(
                scalars[f"{tags[layer.name]}/1_probe_gap"][epoch + 1],
                gap.mean(),
                rtol=1e-4,
            )
            np.testing.assert_allclose(
                scalars[f"{tags[layer.name]}/probe/gap_max"][epoch + 1],
                gap.max(),
                rtol=1e-4,
            )
            max_gap = max(max_gap, gap.mean())
        np.testing.assert_allclose(
            history.history["bn_max_probe_gap"][epoch], max_gap, rtol=1e-4
        )
        assert max_gap > 0.05


def test_nonfinite_statistic_is_reported_once(tmp_path, rng):
    x, y = regression_data(rng, n=64)

    class Poison(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                layer = self.model.get_layer("keras_bn")
                layer.moving_variance.assign(np.full(5, np.nan, "float32"))

    model = three_kinds_model()
    monitor = bn_keras.callbacks.BatchNormMonitor(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(
            x,
            y,
            batch_size=32,
            epochs=3,
            verbose=0,
            callbacks=[Poison(), monitor],
        )
    reports = [
        str(w.message)
        for w in caught
        if "non-finite statistics" in str(w.message)
    ]
    assert len(reports) == 1
    assert "'keras_bn'" in reports[0] and "moving_variance" in reports[0]
    assert issubclass(
        next(w.category for w in caught if "non-finite" in str(w.message)),
        RuntimeWarning,
    )
    assert len(history.history["loss"]) == 3  # no stop unless asked
    assert history.history["bn_nonfinite_layers"] == [1.0, 1.0, 1.0]
    scalars = read_scalars(run_dir(tmp_path))
    assert scalars["batchnorm/nonfinite_layers"] == {1: 1.0, 2: 1.0, 3: 1.0}
    # An alert, with the layer and what to do, from the first epoch end.
    assert scalars["alerts/nonfinite-statistics"] == {1: 1.0, 2: 1.0, 3: 1.0}
    text = read_events(run_dir(tmp_path))["batchnorm/layers"][3].item()
    assert "| error | nonfinite-statistics | bn00-input |" in text.decode()
    assert (
        "- **nonfinite-statistics** (error): NaN or Inf in bn00-input "
        "(keras_bn): moving_variance (5): every prediction that passes "
        "through them is wrong. *What to do:* report.fix() recomputes"
    ) in text.decode()
    # Non-finite values are left out of the histograms, not mis-binned.
    events = read_events(run_dir(tmp_path))
    assert "histograms/bn00-input/moving_variance" not in events
    assert sorted(events["histograms/bn00-input/gamma"]) == [1, 2, 3]


def test_stop_on_nonfinite_stops_at_the_bad_batch(tmp_path, rng):
    x, y = regression_data(rng, n=128)
    x[70] = np.nan  # in batch 3 of 4 (batch size 32)
    model = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(4),
            keras.layers.BatchNormalization(name="poisoned"),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer="sgd", loss="mse")
    counter = BatchCounter()
    monitor = bn_keras.callbacks.BatchNormMonitor(
        tmp_path, update_freq=1, stop_on_nonfinite=True
    )
    with pytest.warns(RuntimeWarning, match="layer 'poisoned' has non-finite"):
        model.fit(
            x,
            y,
            batch_size=32,
            epochs=5,
            shuffle=False,
            verbose=0,
            callbacks=[counter, monitor],
        )
    assert counter.count == 3


def test_unwritable_log_dir_fails_before_the_first_batch(tmp_path, rng):
    x, y = regression_data(rng, n=64)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    log_dir = str(blocker / "logs")
    model = three_kinds_model()
    counter = BatchCounter()
    monitor = bn_keras.callbacks.BatchNormMonitor(log_dir)
    with pytest.raises(
        ValueError, match=re.escape(f"Received: log_dir={log_dir!r}")
    ):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[counter, monitor])
    assert counter.count == 0


@pytest.mark.parametrize(
    "kwargs, error, received",
    [
        ({"update_freq": 0}, ValueError, "update_freq=0"),
        ({"update_freq": "batch"}, ValueError, "update_freq='batch'"),
        ({"update_freq": True}, ValueError, "update_freq=True"),
        ({"update_freq": 2.5}, ValueError, "update_freq=2.5"),
        ({"histograms": "yes"}, TypeError, "histograms='yes'"),
        ({"stop_on_nonfinite": 1}, TypeError, "stop_on_nonfinite=1"),
        ({"probe_data": "x"}, TypeError, "probe_data of type str"),
        ({"log_dir": 3}, TypeError, "log_dir=3"),
        ({"log_dir": ""}, TypeError, "log_dir=''"),
        ({"objective": 3}, TypeError, "objective=3"),
        ({"objective": ""}, TypeError, "objective=''"),
        ({"hparams": {"lr": [1]}}, TypeError, "hparams={'lr': [1]}"),
        ({"hparams": "lr=1"}, TypeError, "hparams='lr=1'"),
    ],
)
def test_argument_errors(tmp_path, kwargs, error, received):
    kwargs = {"log_dir": str(tmp_path), **kwargs}
    with pytest.raises(error, match=f"Received: {re.escape(received)}"):
        bn_keras.callbacks.BatchNormMonitor(**kwargs)


@pytest.mark.parametrize(
    "objective, direction",
    [
        ("val_accuracy", "max"),
        ("val_auc", "max"),
        ("val_loss", "min"),
        ("val_mae", "min"),
        ("val_mean_squared_error", "min"),
        ("val_sparse_categorical_crossentropy", "min"),
    ],
)
def test_objective_direction(tmp_path, objective, direction):
    monitor = bn_keras.callbacks.BatchNormMonitor(tmp_path, objective=objective)
    assert monitor._objective == (objective, direction)


def test_with_log_dir_copies_the_settings(tmp_path, rng):
    x, y = regression_data(rng, n=64)
    monitor = bn_keras.callbacks.BatchNormMonitor(
        tmp_path / "search",
        update_freq=2,
        histograms=False,
        probe_data=x[:8],
        stop_on_nonfinite=True,
    )
    trial_dir = os.path.join(monitor.log_dir, "trial_0", "execution0")
    copy = monitor.with_log_dir(trial_dir)
    assert type(copy) is type(monitor) and copy is not monitor
    assert copy.log_dir == trial_dir and copy.run_dir == trial_dir
    assert monitor.log_dir == str(tmp_path / "search")
    for name in (
        "update_freq",
        "histograms",
        "probe_data",
        "stop_on_nonfinite",
    ):
        assert getattr(copy, name) is getattr(monitor, name)
    # keras-tuner deep-copies callbacks for each trial.
    duplicate = copy_module.deepcopy(copy)
    assert duplicate.on_train_batch_end.__self__ is duplicate
    model = three_kinds_model()
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[copy])
    assert sorted(
        read_scalars(copy.run_dir)["bn00-input/moving_mean/drift"]
    ) == [2, 4]
    # Nothing in the original's folder but the copy's.
    assert os.listdir(monitor.run_dir) == ["trial_0"]
    # What a trial changes: its HParams values and row, its objective.
    trial = monitor.with_log_dir(
        trial_dir,
        session_group="trial_0",
        hparams={"units": 4},
        objective="loss",
    )
    assert (trial.hparams, trial.session_group, trial.objective) == (
        {"units": 4},
        "trial_0",
        "loss",
    )
    with pytest.raises(TypeError, match=re.escape("Received: epochs=3")):
        monitor.with_log_dir(trial_dir, epochs=3)


def test_writes_beside_keras_tensorboard(tmp_path, rng):
    x, y = regression_data(rng, n=64)
    model = three_kinds_model()
    model.fit(
        x,
        y,
        validation_split=0.25,
        epochs=1,
        verbose=0,
        callbacks=[
            keras.callbacks.TensorBoard(tmp_path),
            bn_keras.callbacks.BatchNormMonitor(tmp_path),
        ],
    )
    # The monitor's run is the folder itself; Keras's are below it.
    files = sorted(os.listdir(tmp_path))
    assert files[-2:] == ["train", "validation"]
    assert [name.startswith("events.out.tfevents.") for name in files] == [
        True,
        False,
        False,
    ]
    assert "epoch_loss" in read_scalars(os.path.join(tmp_path, "train"))
    assert "bn02-inner.dense/moving_mean/drift" in read_scalars(
        run_dir(tmp_path)
    )


def test_layers_with_the_same_name_get_distinct_tags(tmp_path, rng):
    def block(name):
        return keras.Sequential(
            [
                keras.Input((4,)),
                keras.layers.Dense(4),
                keras.layers.BatchNormalization(name="bn"),
            ],
            name=name,
        )

    model = keras.Sequential(
        [
            keras.Input((4,)),
            block("block_a"),
            block("block_b"),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer="sgd", loss="mse")
    x = rng.normal(size=(32, 4)).astype("float32")
    monitor = bn_keras.callbacks.BatchNormMonitor(tmp_path, histograms=False)
    model.fit(
        x, x[:, :1], batch_size=16, epochs=1, verbose=0, callbacks=[monitor]
    )
    titles = [c.title for c in read_layout(run_dir(tmp_path)).category]
    # Named after what they normalize: each block's Dense.
    assert titles == ["Overview", "bn01-block_a.dense", "bn02-block_b.dense"]
    scalars = read_scalars(run_dir(tmp_path))
    assert {
        "bn01-block_a.dense/moving_mean/drift",
        "bn02-block_b.dense/moving_mean/drift",
    } <= set(scalars)


@pytest.mark.tensorflow_only
@pytest.mark.slow
def test_probe_leaves_every_replica_unchanged_under_mirrored_strategy(
    tmp_path,
):
    """Each replica keeps its own statistics of the layers that are not
    synchronized; the probe must not touch any of them (restoring the
    statistics by hand after a training call wrote the first replica's
    values to every replica, and so changed training)."""
    script = os.path.join(os.path.dirname(__file__), "mirrored_probe_run.py")
    results_path = tmp_path / "results.json"
    root = os.path.dirname(os.path.dirname(os.path.dirname(script)))
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    env["PYTHONPATH"] = os.pathsep.join(
        [root] + [p for p in [env.get("PYTHONPATH")] if p]
    )
    completed = subprocess.run(
        [sys.executable, script, str(results_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    results = json.loads(results_path.read_text())
    probed, plain = results["with_probe"], results["without_probe"]
    assert probed["probe_gap"] is not None and plain["probe_gap"] is None
    assert probed["loss"] == plain["loss"]
    assert probed["variables"].keys() == plain["variables"].keys()
    differing = 0
    for path, replicas in plain["variables"].items():
        assert len(replicas) == 2, path
        assert probed["variables"][path] == replicas, path
        differing += replicas[0] != replicas[1]
    # The case exercises per-replica statistics that differ.
    assert differing > 0


def test_a_model_without_batchnorm_keeps_its_place(tmp_path, rng):
    """A baseline without BN: its epoch metrics, 0 for the gap, the drift
    and the unhealthy layers (HParams' parallel coordinates drop a session
    that lacks a metric), the Overview alone, and its BN described as
    none."""
    from tests.tuner.helpers import hparams_sessions

    x, y = regression_data(rng, n=64)
    model = keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(4), keras.layers.Dense(1)]
    )
    model.compile(optimizer="sgd", loss="mse")
    monitor = bn_keras.callbacks.BatchNormMonitor(tmp_path, probe_data=x[:8])
    with pytest.warns(UserWarning, match="has no batch normalization layer"):
        model.fit(x, y, epochs=2, verbose=0, callbacks=[monitor])
    scalars = read_scalars(run_dir(tmp_path))
    assert sorted(scalars) == [
        "alerts/unhealthy_layers",
        "batchnorm/max_drift_in_std",
        "batchnorm/max_probe_gap",
        "batchnorm/nonfinite_layers",
        "epoch/loss",
    ]
    for tag in sorted(scalars)[:4]:
        assert scalars[tag] == {1: 0.0, 2: 0.0}, tag
    layout = read_layout(run_dir(tmp_path))
    assert [c.title for c in layout.category] == ["Overview"]
    ((group, values),) = hparams_sessions(run_dir(tmp_path))
    assert group == os.path.basename(tmp_path)
    assert values == {
        "01.placement": "none",
        "02.normalization": "none",
        "03.momentum": "none",
        "04.BN layers": 0.0,
    }
