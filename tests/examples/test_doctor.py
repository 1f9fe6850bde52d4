"""examples/doctor.py runs in quick mode: each broken model gets its
finding, and the table prints what the remedies did."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "doctor.py"


def load_example():
    spec = importlib.util.spec_from_file_location("doctor_example", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.tensorflow_only
def test_doctor_quick(capsys):
    example = load_example()
    rows = example.main(["--quick"])
    printed = capsys.readouterr().out
    assert [row["code"] for row in rows] == [
        "statistics-mismatch",
        "preprocessing-mismatch",
        "noisy-batch-statistics",
    ]
    for row in rows:
        # Each broken model has the finding it was built to have.
        assert example.severity_of(row["report"], row["code"]) in (
            "error",
            "warning",
        )
        assert 0.0 <= row["before"] <= 1.0 and 0.0 <= row["after"] <= 1.0
    # The remedies help: precise statistics, rescaled inputs, larger batches.
    assert all(row["after"] > row["before"] for row in rows)
    assert "Test accuracy before and after the remedy" in printed
    for row in rows:
        assert row["model"] in printed
    assert "=== 2. pixels in 0-255, trained on 0-1 ===" in printed
