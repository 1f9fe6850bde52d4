"""`keras.distribution.DataParallel` on JAX, over 2 virtual CPU devices.

The scenario runs in a fresh process (`jax_data_parallel_run.py`), where
`XLA_FLAGS=--xla_force_host_platform_device_count=2` gives JAX two CPU
devices. Under DataParallel each step's global batch is sharded over the
devices and the layer computes on the global batch: XLA reduces the
statistics across devices itself, so training equals one device on the same
batches, for ghost batches too (formed over the global batch, unlike
`tf.distribute`, where they are formed within each replica).

These tests run in `make test-jax` (the JAX backend's run).
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from tests.callbacks.helpers import read_scalars
from tests.callbacks.helpers import run_dir
from tests.distribute import jax_data_parallel_run as scenario

SCRIPT = scenario.__file__
REPO = os.path.dirname(os.path.dirname(os.path.dirname(SCRIPT)))
ATOL = RTOL = 1e-5

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        keras.backend.backend() != "jax",
        reason="JAX's DataParallel: runs in `make test-jax`",
    ),
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Runs the scenario once; returns its output directory."""
    out = tmp_path_factory.mktemp("data_parallel")
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": " ".join(
            [
                os.environ.get("XLA_FLAGS", ""),
                f"--xla_force_host_platform_device_count={scenario.DEVICES}",
            ]
        ).strip(),
        "PYTHONPATH": os.pathsep.join(
            [REPO] + [p for p in [os.environ.get("PYTHONPATH")] if p]
        ),
    }
    completed = subprocess.run(
        [sys.executable, SCRIPT, str(out)],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return out


def results(run):
    with open(run / "results.json") as f:
        return json.load(f)


def arrays(run, case):
    """`(one device, two devices)`: `{weight path or "predictions": array}`."""
    with np.load(run / f"{case}.npz") as saved:
        one = {k[4:]: saved[k] for k in saved.files if k.startswith("one/")}
        two = {k[4:]: saved[k] for k in saved.files if k.startswith("two/")}
    return one, two


def assert_same(two, one, context):
    assert sorted(two) == sorted(one), context
    for key, value in one.items():
        np.testing.assert_allclose(
            two[key], value, atol=ATOL, rtol=RTOL, err_msg=f"{context}: {key}"
        )


def test_the_batch_is_sharded_over_two_devices(run):
    info = results(run)
    assert len(info["devices"]) == scenario.DEVICES
    assert info["data_layout"] == "('batch', None, None)"
    # The layer's variables live on both devices (replicated).
    assert set(info["sharded_over"].values()) == {scenario.DEVICES}


@pytest.mark.parametrize("case", scenario.CASES)
def test_equals_one_device(run, case):
    """Weights (moving statistics and renorm step included) and predictions
    after 3 epochs of `fit` equal one device's within 1e-5."""
    one, two = arrays(run, case)
    assert_same(two, one, case)
    # The statistics moved, so the comparison has teeth.
    assert np.abs(one["bn/moving_mean"]).max() > 0.1
    if "schedule" in scenario.CASES[case]:
        steps = scenario.EPOCHS * scenario.SAMPLES // scenario.GLOBAL_BATCH
        assert int(two["bn/renorm_step"]) == steps


def test_statistics_are_those_of_the_global_batch(run):
    """Normalizing each device's shard on its own (ghost batches of the
    shard size on one device) trains to other weights: DataParallel does
    not do that."""
    _, two = arrays(run, "plain")
    per_shard, _ = arrays(run, "per_shard")
    difference = max(
        np.abs(per_shard[k] - two[k]).max()
        for k in ("pre/kernel", "head/kernel", "predictions")
    )
    assert difference > 1e-2


def test_monitor_writes_the_same_values(run):
    """BatchNormMonitor's scalars (plain, ghost and renorm layers, probe
    batch included) under DataParallel equal one device's."""
    one, two = arrays(run, "monitor")
    assert_same(two, one, "monitor")
    scalars = {
        where: read_scalars(run_dir(run / "monitor" / where))
        for where in ("one", "two")
    }
    assert sorted(scalars["two"]) == sorted(scalars["one"])
    # Three BN layers in a row after the Dense layer `pre`: they normalize
    # its output, one after the other (`bn01-pre`, `bn01b-pre`, ...).
    for tag in ("bn01-pre/2_mean_drift_in_std", "bn01b-pre/1_probe_gap"):
        assert tag in scalars["one"], tag
    assert len(set(scalars["one"]["bn01c-pre/renorm/rmax"].values())) > 1
    for tag, values in scalars["one"].items():
        assert sorted(scalars["two"][tag]) == sorted(values), tag
        for step, value in values.items():
            np.testing.assert_allclose(
                scalars["two"][tag][step],
                value,
                atol=ATOL,
                rtol=RTOL,
                err_msg=f"{tag} at step {step}",
            )


def test_a_partial_batch_that_cannot_be_sharded_fails_in_jax(run):
    """35 samples in batches of 16 leave a last batch of 3, which 2 devices
    cannot split: Keras passes JAX's own error through (nothing of ours)."""
    error = results(run)["partial_batch_error"]  # a ValueError
    assert error["type"] == "jax._src.sharding.IndivisibleError"
    assert "partitioned 2 times, but the dimension size is 3" in (
        error["message"]
    )
