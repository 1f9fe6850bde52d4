"""A real TensorBoard server finds the monitor's run, charts and layout."""

import html
import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import keras
import numpy as np
import pytest

import bn_keras
from bn_keras.diagnosis import _training_detectors

STARTUP_TIMEOUT_S = 120


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read().decode())


class DeadUnitInitializer(keras.initializers.Initializer):
    """A kernel whose first unit has zero weights: with a negative bias it
    stays below 0, a ReLU unit dead on every row (its gradient is 0)."""

    def __call__(self, shape, dtype=None):
        kernel = np.random.default_rng(1).normal(size=shape) * 0.5
        kernel[:, 0] = 0.0
        return keras.ops.convert_to_tensor(kernel, dtype=dtype)


def constant_channels_model():
    """Input BN on data with a constant feature, then a renorm BN after a
    ReLU layer with a dead unit: a constant channel in each."""
    model = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.BatchNormalization(name="first_bn"),
            keras.layers.Dense(
                8,
                activation="relu",
                kernel_initializer=DeadUnitInitializer(),
                bias_initializer=keras.initializers.Constant(
                    [-1.0] + [0.0] * 7
                ),
            ),
            # Momentum 0.5: its statistics keep up within the 3 steps of
            # an epoch (no alert but the constant channels' note).
            bn_keras.layers.BatchRenormalization(
                momentum=0.5, name="second_bn"
            ),
            keras.layers.Dense(2),
        ]
    )
    model.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def start_tensorboard(log_dir):
    """A TensorBoard server on a free port of 127.0.0.1: `(process, url)`."""
    port = free_port()
    server_log = open(log_dir / "tensorboard.log", "wb")  # noqa: SIM115
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(log_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--reload_interval",
            "1",
        ],
        stdout=server_log,
        stderr=subprocess.STDOUT,
    )
    server_log.close()  # the server holds its own descriptor
    return server, f"http://127.0.0.1:{port}"


def wait_for_tag(server, base, log_dir, run, tag):
    """Waits until the server lists `tag` in `run`; returns all tags."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    tags = {}
    while time.monotonic() < deadline:
        assert server.poll() is None, (log_dir / "tensorboard.log").read_text()
        try:
            tags = get_json(f"{base}/data/plugin/scalars/tags")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            tags = {}
        if tag in tags.get(run, {}):
            break
        time.sleep(0.5)
    return tags


def stop(server):
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=10)


def text_of(base, run):
    """The last text summary of `run` as TensorBoard serves it (HTML),
    and as a person reads it (tags left out, entities decoded)."""
    query = urllib.parse.urlencode({"run": run, "tag": "batchnorm/layers"})
    served = get_json(f"{base}/data/plugin/text/text?{query}")[-1]["text"]
    return served, html.unescape(re.sub(r"<[^>]+>", "", served))


def table_row(*cells):
    """A row of a Markdown table, as TensorBoard renders it."""
    return "\n".join(f"<td>{cell}</td>" for cell in cells)


def scalar_values(base, run, tag):
    query = urllib.parse.urlencode({"run": run, "tag": tag})
    return get_json(f"{base}/data/plugin/scalars/scalars?{query}")


def broken_model():
    """A BN layer fed a NaN: its statistics go NaN, its inference output
    is wrong. An error alert, which names it and says what to do."""
    model = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(4, name="hidden"),
            keras.layers.BatchNormalization(momentum=0.999, name="poisoned"),
            keras.layers.Dense(2),
        ]
    )
    model.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def stale_model():
    """Momentum 0.999 for a few steps on inputs far from mean 0 and
    variance 1: inference normalizes with statistics that barely moved
    from their initial values. A warning, which names the layer and says
    what to do."""
    model = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(4, name="hidden"),
            keras.layers.BatchNormalization(momentum=0.999, name="lagging"),
            keras.layers.Dense(2),
        ]
    )
    model.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


@pytest.fixture(scope="module")
def served_runs(tmp_path_factory):
    """Three fits served by one TensorBoard: `constant` (constant channels,
    Keras's TensorBoard beside the monitor), `broken` (the monitor alone,
    NaN statistics from the first epoch's end) and `stale` (statistics
    lagging behind the batches)."""
    rng = np.random.default_rng(0)
    log_dir = tmp_path_factory.mktemp("served")
    x = rng.normal(size=(64, 5)).astype("float32")
    x[:, 0] = 0.0  # a constant feature
    y = (x[:, 1] > 0).astype("int32")
    constant_channels_model().fit(
        x,
        y,
        batch_size=16,
        epochs=2,
        verbose=0,
        validation_split=0.25,
        callbacks=[
            keras.callbacks.TensorBoard(log_dir / "constant"),
            bn_keras.callbacks.BatchNormMonitor(
                log_dir / "constant", probe_data=x[:16]
            ),
        ],
    )

    class Poison(keras.callbacks.Callback):
        """NaN statistics from the second epoch on."""

        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                layer = self.model.get_layer("poisoned")
                layer.moving_variance.assign(np.full(4, np.nan, "float32"))

    with pytest.warns(RuntimeWarning, match="'poisoned' has non-finite"):
        broken_model().fit(
            x,
            y,
            batch_size=16,
            epochs=3,
            verbose=0,
            callbacks=[
                Poison(),
                bn_keras.callbacks.BatchNormMonitor(log_dir / "broken"),
            ],
        )
    stale_model().fit(
        x * 4.0 + 10.0,
        y,
        batch_size=16,
        epochs=3,
        verbose=0,
        callbacks=[
            bn_keras.callbacks.BatchNormMonitor(
                log_dir / "stale", probe_data=x[:16] * 4.0 + 10.0
            )
        ],
    )
    server, base = start_tensorboard(log_dir)
    try:
        wait_for_tag(
            server, base, log_dir, "broken", "alerts/nonfinite-statistics"
        )
        wait_for_tag(
            server, base, log_dir, "stale", "alerts/statistics-mismatch"
        )
        tags = wait_for_tag(
            server, base, log_dir, "constant", "bn01-dense/1_probe_gap"
        )
        yield base, tags
    finally:
        stop(server)


@pytest.mark.slow
def test_tensorboard_serves_the_monitor_charts(served_runs):
    base, all_tags = served_runs
    # The monitor's run is the folder given to it, Keras's runs inside.
    assert sorted(all_tags) == [
        "broken",
        "constant",
        "constant/train",
        "constant/validation",
        "stale",
    ]
    tags = {
        run.removeprefix("constant").lstrip("/") or ".": run_tags
        for run, run_tags in all_tags.items()
        if run.startswith("constant")
    }
    run_tags = tags["."]
    for layer in ("bn00-input", "bn01-dense"):
        for figure in (
            "1_probe_gap",
            "2_mean_drift_in_std",
            "moving_mean/drift",
            "moving_variance/min",
            "moving_variance/constant_channels",
            "probe/constant_channels",
            "gamma/dead_fraction",
        ):
            assert f"{layer}/{figure}" in run_tags
    assert "bn01-dense/renorm/rmax" in run_tags
    assert "batchnorm/max_drift_in_std" in run_tags
    # Keras's TensorBoard writes the epoch metrics: the monitor does not.
    assert not [tag for tag in run_tags if tag.startswith("epoch/")]
    # Histograms have a prefix of their own, apart from the scalars.
    histograms = get_json(f"{base}/data/plugin/histograms/tags")
    assert "histograms/bn00-input/gamma" in histograms["constant"]

    # Every scalar of every run is finite, and the constant channels
    # are counted rather than turned into infinities.
    for run, run_scalars in all_tags.items():
        if run == "broken":
            continue
        for tag in run_scalars:
            values = [v for _, _, v in scalar_values(base, run, tag)]
            assert values and np.all(np.isfinite(values)), (run, tag)
    for tag, expected in (
        ("bn00-input/probe/constant_channels", 1.0),
        ("bn00-input/moving_variance/constant_channels", 1.0),
        ("bn01-dense/probe/constant_channels", 1.0),
        ("bn01-dense/moving_variance/constant_channels", 1.0),
        # Both layers, at every epoch end: a note.
        ("alerts/constant-channels", 2.0),
    ):
        values = scalar_values(base, "constant", tag)
        # Beside Keras's callback, at its steps: the epoch from 0.
        assert [step for _, step, _ in values] == [0, 1]
        assert [v for _, _, v in values] == [expected, expected], tag
    drift = scalar_values(base, "constant", "bn00-input/moving_mean/drift")
    assert all(value > 0 for _, _, value in drift)

    layout = get_json(f"{base}/data/plugin/custom_scalars/layout")
    # TensorBoard merges the runs' layouts by title, in run order.
    titles = [c["title"] for c in layout["category"]]
    assert titles == ["Overview", "bn01-hidden", "bn00-input", "bn01-dense"]
    # The Overview alone is open when Custom Scalars opens.
    assert [c.get("closed", False) for c in layout["category"]] == [
        False,
        True,
        True,
        True,
    ]
    overview = [c["multiline"]["tag"] for c in layout["category"][0]["chart"]]
    # How many layers have an error or a warning first (the same chart in
    # every run: it stays first when TensorBoard merges their layouts),
    # then each run's own: the broken run's epoch metrics and figures and
    # its error's chart; Keras's epoch metrics, which its train and
    # validation runs draw side by side, and the note of the other.
    assert overview[0] == ["^alerts/unhealthy_layers$"]
    assert overview.index(["^alerts/nonfinite\\-statistics$"]) < overview.index(
        ["^epoch_accuracy$"]
    )
    assert ["^epoch_loss$"] in overview
    # The alerts only some runs have come last, in the order of the runs.
    assert overview[-2:] == [
        ["^alerts/constant\\-channels$"],
        ["^alerts/statistics\\-mismatch$"],
    ]
    unhealthy = scalar_values(base, "constant", "alerts/unhealthy_layers")
    assert [v for _, _, v in unhealthy] == [0.0, 0.0]  # notes only
    served = {tag for run_scalars in all_tags.values() for tag in run_scalars}
    for category in layout["category"]:
        for chart in category["chart"]:
            if "margin" in chart:
                (series,) = chart["margin"]["series"]
                assert set(series.values()) <= served, series
                continue
            # One tag a line chart, which the server has.
            (pattern,) = chart["multiline"]["tag"]
            assert any(re.search(pattern, t) for t in served), pattern

    # The text summary: one table row per layer, in forward order, after
    # the alerts (here a note).
    served, last = text_of(base, "constant")
    assert table_row("info", "constant-channels", "bn00-input, bn01-dense") in (
        served
    )
    rows = [
        served.index(f"<td>{tag}</td>") for tag in ("bn00-input", "bn01-dense")
    ]
    assert rows == sorted(rows)
    assert (
        "Channels whose input holds one value, with no variance to "
        "normalize: bn00-input (first_bn): 1/5 on the training batches, 1/5 "
        "on the probe batch; bn01-dense (second_bn): 1/8 on the training "
        "batches, 1/8 on the probe batch."
    ) in last


def assert_one_layer_alerted_every_epoch(base, run, code):
    """`alerts/<code>` and the count of unhealthy layers are 1 at each of
    the 3 epoch ends of `run`."""
    values = scalar_values(base, run, f"alerts/{code}")
    assert [(step, value) for _, step, value in values] == [
        (1, 1.0),
        (2, 1.0),
        (3, 1.0),
    ]
    unhealthy = scalar_values(base, run, "alerts/unhealthy_layers")
    assert [v for _, _, v in unhealthy] == [1.0, 1.0, 1.0]


@pytest.mark.slow
def test_a_broken_model_raises_an_alert_naming_the_layer_and_remedy(
    served_runs,
):
    base, _ = served_runs
    # From the first epoch end on: the layer with NaN statistics, counted.
    assert_one_layer_alerted_every_epoch(base, "broken", "nonfinite-statistics")
    # The text summary names the layer and says what to do.
    served, last = text_of(base, "broken")
    assert table_row("error", "nonfinite-statistics", "bn01-hidden") in served
    assert (
        "nonfinite-statistics (error): NaN or Inf in bn01-hidden "
        "(poisoned): moving_variance (4): every prediction that passes "
        "through them is wrong. What to do: report.fix() recomputes the "
        "moving statistics from the data. Restore the weights from a "
        "checkpoint taken before training diverged; look for a NaN or Inf "
        "batch or a diverging loss"
    ) in last


@pytest.mark.slow
def test_stale_statistics_raise_an_alert_naming_the_layer_and_remedy(
    served_runs,
):
    base, _ = served_runs
    # A warning at every epoch end, charted in the Overview.
    assert_one_layer_alerted_every_epoch(base, "stale", "statistics-mismatch")
    layout = get_json(f"{base}/data/plugin/custom_scalars/layout")
    titles = {
        chart["title"]
        for chart in layout["category"][0]["chart"]
        if chart["multiline"]["tag"] == ["^alerts/statistics\\-mismatch$"]
    }
    assert titles == {
        "WARNING statistics-mismatch, how many BN layers: moving statistics "
        "do not match the data (what to do: Text)"
    }
    # The text summary names the layer, says why, and what to do, in the
    # words of `bn-keras doctor`.
    served, last = text_of(base, "stale")
    assert table_row("warning", "statistics-mismatch", "bn01-hidden") in served
    assert (
        "statistics-mismatch (warning): The moving statistics of bn01-hidden "
        "(lagging) lag behind the training batches: over the last 4 training "
        "steps"
    ) in last
    remedy = _training_detectors.REMEDY_LAGGING.replace("`", "")
    assert f"What to do: {remedy}" in last
