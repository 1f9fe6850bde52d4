"""A real TensorBoard server finds the monitor's run, charts and layout."""

import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
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


@pytest.mark.slow
def test_tensorboard_serves_the_monitor_charts(tmp_path, rng):
    x = rng.normal(size=(64, 5)).astype("float32")
    y = rng.normal(size=(64, 1)).astype("float32")
    model = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(8),
            keras.layers.BatchNormalization(name="first_bn"),
            keras.layers.ReLU(),
            bn_keras.layers.BatchRenormalization(name="second_bn"),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer="sgd", loss="mse")
    model.fit(
        x,
        y,
        batch_size=16,
        epochs=2,
        verbose=0,
        callbacks=[
            keras.callbacks.TensorBoard(tmp_path),
            bn_keras.callbacks.BatchNormMonitor(tmp_path, probe_data=x[:16]),
        ],
    )

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server_log = open(tmp_path / "tensorboard.log", "wb")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(tmp_path),
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
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        tags = {}
        while time.monotonic() < deadline:
            assert server.poll() is None, (
                tmp_path / "tensorboard.log"
            ).read_text()
            try:
                tags = get_json(f"{base}/data/plugin/scalars/tags")
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                tags = {}
            if "second_bn/moving_mean/drift" in tags.get("batchnorm", {}):
                break
            time.sleep(0.5)
        assert "batchnorm" in tags, f"no batchnorm run in {sorted(tags)}"
        assert "train" in tags  # Keras's run, beside it
        run_tags = tags["batchnorm"]
        for layer in ("first_bn", "second_bn"):
            for figure in (
                "moving_mean/drift",
                "moving_mean/drift_in_std",
                "moving_variance/drift_from_start",
                "gamma/dead_fraction",
                "probe/gap",
            ):
                assert f"{layer}/{figure}" in run_tags
        assert "second_bn/renorm/rmax" in run_tags
        assert "batchnorm/max_drift_in_std" in run_tags

        scalars = get_json(
            f"{base}/data/plugin/scalars/scalars?run=batchnorm"
            "&tag=first_bn/moving_mean/drift"
        )
        assert [step for _, step, _ in scalars] == [0, 1]
        assert all(np.isfinite(value) and value > 0 for _, _, value in scalars)

        layout = get_json(f"{base}/data/plugin/custom_scalars/layout")
        categories = {c["title"]: c for c in layout["category"]}
        assert sorted(categories) == ["first_bn", "second_bn"]
        chart_titles = [c["title"] for c in categories["second_bn"]["chart"]]
        assert "second_bn: moving_mean drift" in chart_titles
        assert "second_bn: renorm clipped_fraction" in chart_titles
        # The layout's patterns name tags the server has.
        for category in categories.values():
            for chart in category["chart"]:
                for pattern in chart["multiline"]["tag"]:
                    assert any(re.search(pattern, t) for t in run_tags), pattern
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
        server_log.close()
