"""The monitor and recalibration on the JAX and PyTorch backends, without
TensorFlow (a GPU image may have JAX or PyTorch and no TensorFlow).

Each runs in a subprocess on its backend, with `import tensorflow` made to
fail. The PyTorch case runs where torch is installed: in `make test-torch`.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.callbacks.helpers import assert_figures_close
from tests.callbacks.helpers import expected_figures
from tests.callbacks.helpers import read_events
from tests.callbacks.helpers import read_layout
from tests.callbacks.helpers import read_scalars
from tests.callbacks.helpers import run_dir

SCRIPT = os.path.join(os.path.dirname(__file__), "monitor_run.py")
TAGS = {
    "keras_bn": "bn00-input",
    "ghost": "bn01-dense",
    "renorm": "bn01b-dense",  # the second BN of the Dense's output
}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_monitor_writes_event_files_without_tensorflow(backend, tmp_path):
    pytest.importorskip(backend, reason=f"{backend} is not installed here")
    results_path = tmp_path / "results.json"
    log_dir = tmp_path / "logs"
    env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(SCRIPT)))
    env["PYTHONPATH"] = os.pathsep.join(
        [root] + [p for p in [env.get("PYTHONPATH")] if p]
    )
    completed = subprocess.run(
        [sys.executable, SCRIPT, str(log_dir), str(results_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    results = json.loads(results_path.read_text())
    assert results["backend"] == backend
    assert results["tensorflow_imported"] is False

    # Written by TensorBoard's own event writer, read back as usual.
    scalars = read_scalars(run_dir(log_dir))
    snapshots = {
        int(step): {
            layer: {k: np.array(v) for k, v in weights.items()}
            for layer, weights in taken.items()
        }
        for step, taken in results["snapshots"].items()
    }
    assert sorted(scalars["bn00-input/moving_mean/drift"]) == [2, 4, 6, 8]
    for step in (2, 4, 6, 8):
        for layer, epsilon in results["epsilon"].items():
            expected = expected_figures(
                snapshots[step][layer],
                snapshots[step - 2][layer],
                snapshots[0][layer],
                epsilon,
            )
            assert_figures_close(scalars, TAGS[layer], step, expected)
    assert scalars["bn00-input/moving_mean/drift_from_start"][8] > 0.1
    assert "bn01b-dense/renorm/clipped_fraction" in scalars
    assert sorted(scalars["bn01-dense/1_probe_gap"]) == [2, 4, 6, 8]
    # The epoch figures and metrics on the epoch axis, from 1.
    assert sorted(scalars["batchnorm/max_drift_in_std"]) == [1, 2]
    assert sorted(scalars["epoch/loss"]) == [1, 2]
    assert [c.title for c in read_layout(run_dir(log_dir)).category] == [
        "Overview",
        *TAGS.values(),
    ]
    # The text summary, written without TensorFlow too: at the start and
    # at the last epoch's end.
    texts = read_events(run_dir(log_dir))["batchnorm/layers"]
    assert sorted(texts) == [0, 2]
    table = texts[2].item().decode()
    assert (
        "| bn01-dense | ghost | Dense -> BN -> BatchRenormalization | "
        "ghost(4), 0.8 |"
    ) in table
    assert len(results["history"]["bn_max_drift_in_std"]) == 2

    # recalibrate: the first layer's inputs are the raw data.
    x = (np.random.default_rng(0).normal(size=(64, 4)) * 2 + 1).astype(
        "float32"
    )
    np.testing.assert_allclose(
        results["recalibrated_mean"], x.astype(np.float64).mean(0), atol=1e-4
    )
    np.testing.assert_allclose(
        results["recalibrated_variance"], x.astype(np.float64).var(0), rtol=1e-4
    )
