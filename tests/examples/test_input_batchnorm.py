"""Runs `examples/input_batchnorm.py` in quick mode, as CI does."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "input_batchnorm.py"
SETTINGS = (
    "no normalization",
    "by hand",
    "keras Normalization",
    "input BN (batch)",
    "input BN (renorm)",
)
BATCH_SIZES = (8, 32, 256)
EPOCHS = 2


@pytest.mark.slow
def test_quick_run_prints_figures_and_saves_the_plot(tmp_path):
    out = tmp_path / "figures"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    target = re.search(r"validation MSE <= ([\d.]+)", result.stdout)
    assert target and float(target.group(1)) > 0
    assert f"{EPOCHS} epochs of 320 samples" in result.stdout

    blocks = re.split(r"\nbatch (\d+) \((\d+) steps\)\n", result.stdout)[1:]
    assert [int(b) for b in blocks[0::3]] == list(BATCH_SIZES)
    # 320 training samples: ceil(320 / batch) steps an epoch.
    assert [int(s) for s in blocks[1::3]] == [
        -(-320 // b) * EPOCHS for b in BATCH_SIZES
    ]
    printed = {}
    for batch, text in zip(BATCH_SIZES, blocks[2::3]):
        for setting in SETTINGS:
            (line,) = [ln for ln in text.splitlines() if ln.startswith(setting)]
            match = re.fullmatch(
                re.escape(setting)
                + r"\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\d+|-)",
                line,
            )
            assert match, line
            printed[batch, setting] = float(match.group(1))
            if match.group(4) != "-":
                assert 1 <= int(match.group(4)) <= EPOCHS
        assert re.search(r"by hand\s+[\d.]+\s+1\.00\s+1\.00", text)

    results = json.loads((out / "input_batchnorm.json").read_text())
    for batch in BATCH_SIZES:
        curves = results["curves"][str(batch)]
        assert sorted(curves) == sorted(SETTINGS)
        for setting in SETTINGS:
            (curve,) = curves[setting]  # one seed
            assert len(curve) == EPOCHS
            assert printed[batch, setting] == pytest.approx(
                min(curve), abs=1e-3
            )
        # keras.layers.Normalization adapted on the training set computes
        # the standardization by hand: the same curve.
        np.testing.assert_allclose(
            curves["keras Normalization"], curves["by hand"], rtol=1e-3
        )

    png = out / "input_batchnorm.png"
    assert png.is_file() and png.stat().st_size > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"Saved {png}" in result.stdout
