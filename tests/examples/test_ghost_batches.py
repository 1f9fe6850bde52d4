"""examples/ghost_batches.py runs in quick mode."""

import importlib.util
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "ghost_batches.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def load_example():
    spec = importlib.util.spec_from_file_location("ghost_batches", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.tensorflow_only
def test_ghost_batches_quick(tmp_path, capsys):
    example = load_example()
    summary = example.main(["--quick", "--out", str(tmp_path)])
    printed = capsys.readouterr().out

    assert list(summary) == [
        "plain BN, batch 512",
        "ghost 32, batch 512",
        "plain BN, batch 32",
    ]
    for setting, result in summary.items():
        assert 0.0 < result["val_accuracy"] <= result["best_val_accuracy"] <= 1
        assert math.isfinite(result["val_loss"]) and result["loss"] > 0
        assert len(result["val_loss_curve"]) == 2
        assert result["val_loss_curve"][-1] == pytest.approx(result["val_loss"])
        assert result["seconds_per_epoch"] > 0
        row = next(
            line for line in printed.splitlines() if line.startswith(setting)
        )
        assert float(row.split()[-5]) == pytest.approx(
            result["best_val_accuracy"], abs=5e-5
        )
    png = tmp_path / example.FIGURE_NAME
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    assert png.stat().st_size > 1000


def test_ghost_setting_uses_ghost_batches():
    example = load_example()
    layer = example.normalization(example.GHOST_BATCH)
    assert layer.virtual_batch_size == 32 and layer.momentum == 0.9
    assert example.normalization(None).virtual_batch_size is None
