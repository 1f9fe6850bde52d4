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

pytestmark = pytest.mark.tensorflow_only


@pytest.mark.slow
def test_report_prints_each_target_with_pass_or_miss(capsys):
    bench_layers.main(
        ["--rounds", "1", "--models", "mlp", "--jit", "off",
         "--bandwidth", "8,4,4,8"]
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
