"""A real TensorBoard server finds the monitor's run, charts and layout."""

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
            bn_keras.layers.BatchRenormalization(name="second_bn"),
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


def scalar_values(base, run, tag):
    query = urllib.parse.urlencode({"run": run, "tag": tag})
    return get_json(f"{base}/data/plugin/scalars/scalars?{query}")


@pytest.mark.slow
def test_tensorboard_serves_the_monitor_charts(tmp_path, rng):
    x = rng.normal(size=(64, 5)).astype("float32")
    x[:, 0] = 0.0  # a constant feature
    y = (x[:, 1] > 0).astype("int32")
    model = constant_channels_model()
    model.fit(
        x,
        y,
        batch_size=16,
        epochs=2,
        verbose=0,
        validation_split=0.25,
        callbacks=[
            keras.callbacks.TensorBoard(tmp_path),
            bn_keras.callbacks.BatchNormMonitor(tmp_path, probe_data=x[:16]),
        ],
    )

    server, base = start_tensorboard(tmp_path)
    try:
        tags = wait_for_tag(
            server, base, tmp_path, "batchnorm", "bn02-second_bn/1_probe_gap"
        )
        assert sorted(tags) == ["batchnorm", "train", "validation"]
        run_tags = tags["batchnorm"]
        for layer in ("bn01-first_bn", "bn02-second_bn"):
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
        assert "bn02-second_bn/renorm/rmax" in run_tags
        assert "batchnorm/max_drift_in_std" in run_tags
        # Histograms have a prefix of their own, apart from the scalars.
        histograms = get_json(f"{base}/data/plugin/histograms/tags")
        assert "histograms/bn01-first_bn/gamma" in histograms["batchnorm"]

        # Every scalar of every run is finite, and the constant channels
        # are counted rather than turned into infinities.
        for run, run_scalars in tags.items():
            for tag in run_scalars:
                values = [v for _, _, v in scalar_values(base, run, tag)]
                assert values and np.all(np.isfinite(values)), (run, tag)
        for tag, expected in (
            ("bn01-first_bn/probe/constant_channels", 1.0),
            ("bn01-first_bn/moving_variance/constant_channels", 1.0),
            ("bn02-second_bn/probe/constant_channels", 1.0),
            ("bn02-second_bn/moving_variance/constant_channels", 1.0),
        ):
            values = scalar_values(base, "batchnorm", tag)
            assert [step for _, step, _ in values] == [0, 1]
            assert [v for _, _, v in values] == [expected, expected], tag
        drift = scalar_values(
            base, "batchnorm", "bn01-first_bn/moving_mean/drift"
        )
        assert all(value > 0 for _, _, value in drift)

        layout = get_json(f"{base}/data/plugin/custom_scalars/layout")
        titles = [c["title"] for c in layout["category"]]
        assert titles == ["Overview", "bn01-first_bn", "bn02-second_bn"]
        overview = layout["category"][0]["chart"]
        assert [c["multiline"]["tag"] for c in overview[:2]] == [
            ["^epoch_accuracy$"],
            ["^epoch_loss$"],
        ]
        served = {tag for run_scalars in tags.values() for tag in run_scalars}
        for category in layout["category"]:
            for chart in category["chart"]:
                if "margin" in chart:
                    (series,) = chart["margin"]["series"]
                    assert set(series.values()) <= served, series
                    continue
                # The layout's patterns name tags the server has.
                for pattern in chart["multiline"]["tag"]:
                    assert any(re.search(pattern, t) for t in served), pattern

        # The text summary: one table row per layer, in forward order.
        query = urllib.parse.urlencode(
            {"run": "batchnorm", "tag": "batchnorm/layers"}
        )
        texts = get_json(f"{base}/data/plugin/text/text?{query}")
        last = texts[-1]["text"]
        assert last.index("bn01-first_bn") < last.index("bn02-second_bn")
        assert "1/8 channels constant on the training batches" in last
    finally:
        stop(server)
