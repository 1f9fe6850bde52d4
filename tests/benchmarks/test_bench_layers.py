"""The speed report runs end to end and reports every target it measured.

Not timed: the figures themselves are the benchmark's business.
"""

import re
import sys
from pathlib import Path

import keras
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_layers  # noqa: E402


@pytest.mark.tensorflow_only
@pytest.mark.slow
def test_report_prints_each_target_with_pass_or_miss(capsys):
    bench_layers.main(
        ["--rounds", "1", "--models", "mlp", "--jit", "off",
         "--bandwidth", "8,4,4,8", "--quick"]
    )
    out = capsys.readouterr().out
    report = out.split("Targets (")[1]
    rows = re.findall(
        r"^(.+?)\s+(<=|>=) (\d\.\d\d)\s+(-?\d+\.\d{3}) \[.*?\]\s*(PASS|MISS)$",
        report,
        flags=re.M,
    )
    cases = [row[0].strip() for row in rows]
    assert cases == [
        "mlp: plain",
        "mlp: ghost m=32",
        "mlp: renorm (vs Keras renorm)",
        "fold_batchnorm speed-up, with keras BN",
        "fold_batchnorm speed-up, with bn_keras plain",
        "fold_batchnorm speed-up, MobileNetV2, keras BN",
        "monitor per epoch: share of fit in its hooks",
        "monitor per epoch: fit time with / without",
    ]
    for case, sign, bound, value, result in rows:
        met = (
            float(value) <= float(bound)
            if sign == "<="
            else float(value) >= float(bound)
        )
        assert result == ("PASS" if met else "MISS"), case
    assert "of copy" in out
    assert f"backend {keras.backend.backend()}" in out


def test_unknown_variant_is_refused(capsys):
    with pytest.raises(SystemExit):
        bench_layers.main(["--variants", "nope"])
    assert "unknown variants ['nope']" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_backend_option_reports_on_that_backend(backend, capfd):
    """`--backend` runs the report on that backend: in a new process when
    Keras already runs on another one (as here on TensorFlow)."""
    pytest.importorskip(backend, reason=f"{backend} is not installed here")
    status = bench_layers.main(
        ["--backend", backend, "--rounds", "1", "--models", "mlp",
         "--jit", "on" if backend == "jax" else "off",
         "--variants", "bn_keras plain", "--no-fold", "--no-monitor",
         "--no-fit", "--bandwidth", "8,4,4,8"]
    )
    out = capfd.readouterr().out
    assert status == 0
    assert f"backend {backend}," in out
    rows = {
        "table": r"^bn_keras plain\s+\d+\.\d+\s+keras BN\s+\d\.\d{3}",
        "bandwidth": r"^bn_keras plain\s+\d+\.\d GB/s\s+\d+\.\d\d of copy",
        "target": r"^mlp(, jit)?: plain\s+<= 1\.02",
    }
    for what, row in rows.items():
        assert re.search(row, out, flags=re.MULTILINE), what


def test_unknown_backend_is_refused(capsys):
    with pytest.raises(SystemExit):
        bench_layers.main(["--backend", "nope"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err
