"""Runs `examples/input_batchnorm.py` in quick mode, as CI does."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "input_batchnorm.py"
SETTINGS = ("no normalization", "standardized by hand", "input_batchnorm=True")


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
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()

    target = re.search(r"validation MSE <= ([\d.]+)", result.stdout)
    assert target and float(target.group(1)) > 0
    assert "6 epochs" in result.stdout
    for setting in SETTINGS:
        (line,) = [line for line in lines if line.startswith(setting)]
        # Either "<epoch> <seconds> <best>" or "not in 6 - <best>".
        match = re.fullmatch(
            re.escape(setting) + r"\s+(\d+|not in 6)\s+([\d.]+|-)\s+([\d.]+)",
            line,
        )
        assert match, line
        if match.group(1) != "not in 6":
            assert 1 <= int(match.group(1)) <= 6
            assert float(match.group(2)) > 0
        assert float(match.group(3)) >= 0

    png = out / "input_batchnorm.png"
    assert png.is_file() and png.stat().st_size > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"Saved {png}" in result.stdout
