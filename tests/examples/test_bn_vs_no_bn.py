"""examples/bn_vs_no_bn.py runs in quick mode and shows BN's head start."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "bn_vs_no_bn.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def load_example():
    spec = importlib.util.spec_from_file_location("bn_vs_no_bn", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.tensorflow_only
def test_bn_vs_no_bn_quick(tmp_path, capsys):
    example = load_example()
    results = example.main(["--quick", "--out", str(tmp_path)])
    printed = capsys.readouterr().out

    assert set(results) == {(0.01, "no BN"), (0.01, "BN")}
    for result in results.values():
        assert len(result["val_accuracy"]) == 2
        assert all(0.0 <= a <= 1.0 for a in result["val_accuracy"])
        assert result["best"] == max(result["val_accuracy"])
    # The classic result, already after two epochs at this learning rate:
    # with BN the CNN is far ahead (about 0.95 against chance, 0.1).
    bn, no_bn = results[(0.01, "BN")], results[(0.01, "no BN")]
    assert bn["best"] > no_bn["best"] + 0.3

    rows = [
        line.split()
        for line in printed.splitlines()
        if line.startswith(" 0.01")
    ]
    assert [row[1] for row in rows] == ["no", "BN"]
    assert float(rows[1][-4]) == pytest.approx(
        results[(0.01, "BN")]["best"], abs=5e-4
    )
    png = tmp_path / example.FIGURE_NAME
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    assert png.stat().st_size > 1000
    assert f"Saved {png}" in printed


def test_first_epoch_at():
    example = load_example()
    assert example.first_epoch_at([0.5, 0.96, 0.97], 0.95) == 2
    assert example.first_epoch_at([0.5, 0.6], 0.95) is None
