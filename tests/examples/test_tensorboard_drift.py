"""examples/tensorboard_drift.py runs in quick mode and writes the runs."""

import importlib.util
import os
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import TENSORS
from tensorboard.backend.event_processing.event_accumulator import (
    EventAccumulator,
)
from tensorboard.util import tensor_util

SCRIPT = (
    Path(__file__).resolve().parents[2] / "examples" / "tensorboard_drift.py"
)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def load_example():
    spec = importlib.util.spec_from_file_location("tensorboard_drift", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def scalar(run_dir, tag):
    accumulator = EventAccumulator(str(run_dir), size_guidance={TENSORS: 0})
    accumulator.Reload()
    return {
        event.step: float(tensor_util.make_ndarray(event.tensor_proto))
        for event in accumulator.Tensors(tag)
    }


@pytest.mark.slow
@pytest.mark.tensorflow_only
def test_tensorboard_drift_quick(tmp_path, capsys):
    example = load_example()
    results = example.main(["--quick", "--out", str(tmp_path)])
    printed = capsys.readouterr().out

    assert list(results) == [0.99, 0.9]
    for momentum, figures in results.items():
        run = tmp_path / "logs" / f"momentum_{momentum}"
        # The monitor's run is the folder, Keras's runs are inside it.
        assert sorted(os.listdir(run))[-2:] == ["train", "validation"]
        assert len(os.listdir(run)) == 3
        # What the script prints is what the monitor wrote to TensorBoard,
        # at the steps of Keras's callback beside it (epochs from 0).
        written = scalar(run, "batchnorm/max_probe_gap")
        assert sorted(written) == [0, 1]
        for epoch in (0, 1):
            assert written[epoch] == pytest.approx(
                figures["bn_max_probe_gap"][epoch], rel=1e-5
            )
    # Keras's default momentum leaves the moving statistics behind: a far
    # larger train/inference gap than with 0.9 after two epochs.
    assert results[0.99]["bn_max_probe_gap"][-1] > (
        2 * results[0.9]["bn_max_probe_gap"][-1]
    )
    assert f"tensorboard --logdir {tmp_path / 'logs'}" in printed
    png = tmp_path / example.FIGURE_NAME
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    assert png.stat().st_size > 1000
