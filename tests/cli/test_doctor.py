"""`bn-keras doctor`: the report, --fix, --json, exit statuses and bad
input, as a user runs it."""

import csv
import json

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits

import bn_keras
from tests.cli.helpers import imported_modules
from tests.cli.helpers import run_cli
from tests.cli.helpers import run_entry_point
from tests.cli.helpers import without_import_times

L = keras.layers


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A digits MLP trained on raw pixels (0-16) whose moving statistics
    lag (momentum 0.999, five epochs), a model without BN, and the digits
    as a CSV file."""
    folder = tmp_path_factory.mktemp("doctor")
    digits = load_digits()
    x, y = digits.data.astype("float32"), digits.target
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            L.Dense(32, use_bias=False),
            L.BatchNormalization(momentum=0.999),
            L.ReLU(),
            L.Dense(10),
        ],
        name="lagging",
    )
    model.compile(
        "adam",
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x, y, batch_size=32, epochs=5, verbose=0)
    model.save(folder / "lagging.keras")
    keras.Sequential([keras.Input((64,)), L.Dense(10)]).save(
        folder / "plain.keras"
    )
    with open(folder / "digits.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow([f"p{i}" for i in range(64)] + ["label"])
        writer.writerows([*row, label] for row, label in zip(x, y))
    (folder / "notes.keras").write_text("not a model")
    return folder


def test_report_and_fix(files, capsys):
    model, fixed = files / "lagging.keras", files / "fixed.keras"
    status, out, err = run_cli(
        capsys, "doctor", model, "--dataset", "digits", "--fix", fixed
    )
    assert status == 1, err
    assert err == ""
    lines = out.splitlines()
    assert lines[0].startswith(
        "Batch normalization diagnosis of 'lagging': 1 batch normalization "
        "layer, 1797 samples, training batch size 32"
    )
    assert max(len(line) for line in lines) <= 120
    assert "warning   statistics-mismatch" in out
    assert "Remedy:" in out
    assert f"wrote {fixed}: precise statistics" in out
    # The fixed model is healthy on the same data.
    status, out, _ = run_cli(capsys, "doctor", fixed, "--dataset", "digits")
    assert status == 0, out
    assert "No findings" in out


def test_json(files, capsys):
    status, out, _ = run_cli(
        capsys,
        "doctor",
        files / "lagging.keras",
        "--data",
        files / "digits.csv",
        "--target",
        "label",
        "--json",
    )
    assert status == 1
    report = json.loads(out)
    assert report["ok"] is False
    assert report["summary"]["samples"] == 1797
    assert report["summary"]["after"] > report["summary"]["before"]
    assert report["findings"][0]["code"] == "statistics-mismatch"


def test_model_without_batchnorm(files, capsys):
    status, out, _ = run_cli(
        capsys, "doctor", files / "plain.keras", "--dataset", "digits"
    )
    assert status == 0
    assert "no batch normalization layers: nothing to diagnose" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["lagging.keras"], "give the data to diagnose the model on"),
        (["notes.keras", "--dataset", "digits"], "not a valid .keras archive"),
        (["missing.keras", "--dataset", "digits"], "no such file"),
        (
            ["lagging.keras", "--dataset", "digits", "--fix", "out.h5"],
            "--fix out.h5: the output must be a .keras file",
        ),
        (
            ["lagging.keras", "--dataset", "wine"],
            "--dataset wine does not fit lagging.keras: the model expects "
            "inputs of shape (None, 64), the data has samples of shape (13,)",
        ),
        (
            ["lagging.keras", "--dataset", "digits", "--limit", "20"],
            "20 samples make one batch of --batch-size 32",
        ),
        (
            ["lagging.keras", "--dataset", "digits", "--batch-size", "0"],
            "--batch-size must be a positive integer; got 0",
        ),
    ],
)
def test_usage_errors_are_one_line(files, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(files)
    status, out, err = run_cli(capsys, "doctor", *argv)
    assert status == 2
    assert out == ""
    assert err.startswith("bn-keras doctor: error: ")
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_help_without_tensorflow():
    completed = run_entry_point("doctor", "--help", PYTHONPROFILEIMPORTTIME=1)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "statistics-mismatch" in completed.stdout
    modules = imported_modules(completed.stderr)
    assert "bn_keras.cli.doctor_command" in modules
    heavy = [
        m
        for m in modules
        if m.split(".")[0] in ("tensorflow", "keras", "jax")
        or m.startswith(("bn_keras.diagnosis", "bn_keras.layers"))
    ]
    assert heavy == []
    assert without_import_times(completed.stderr).strip() == ""


def test_data_on_another_scale_is_named(files, capsys, tmp_path):
    x = load_digits().data.astype("float32")
    np.savez(tmp_path / "scaled.npz", x=x * 16.0, y=load_digits().target)
    status, out, _ = run_cli(
        capsys,
        "doctor",
        files / "lagging.keras",
        "--data",
        tmp_path / "scaled.npz",
        "--target",
        "y",
    )
    assert status == 1
    assert "preprocessing-mismatch" in out
    assert "larger than in training" in out


def test_a_fix_that_cannot_be_written_is_a_usage_error(files, capsys):
    out_path = files / "no-such-folder" / "fixed.keras"
    status, _, err = run_cli(
        capsys, "doctor", files / "lagging.keras", "--dataset", "digits",
        "--fix", out_path,
    )
    assert status == 2
    assert err.strip().splitlines()[-1] == (
        f"bn-keras doctor: error: --fix {out_path}: cannot write: "
        "No such file or directory"
    )


def test_unlabeled_files_are_diagnosed_without_a_metric(files, capsys):
    """A CSV or NPZ file without --target is the model's inputs alone: the
    report is the Python API's without labels (no metric)."""
    digits = load_digits()
    x = digits.data.astype("float32")
    np.savez(files / "inputs.npz", pixels=x)
    with open(files / "inputs.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow([f"p{i}" for i in range(64)])
        writer.writerows(x)
    model = keras.saving.load_model(files / "lagging.keras", compile=False)
    expected = bn_keras.diagnose(model, x)
    for name in ("inputs.npz", "inputs.csv"):
        status, out, err = run_cli(
            capsys, "doctor", files / "lagging.keras", "--data", files / name
        )
        assert status == 1, err
        assert out.startswith(str(expected).splitlines()[0])
        assert "accuracy" not in out
        assert "warning   statistics-mismatch" in out
    # Several arrays and no --target: which is the input is not guessed.
    np.savez(files / "two.npz", pixels=x, label=digits.target)
    status, _, err = run_cli(
        capsys, "doctor", files / "lagging.keras", "--data", files / "two.npz"
    )
    assert status == 2
    assert err.strip() == (
        f"bn-keras doctor: error: {files / 'two.npz'}: holds the arrays "
        "label, pixels: name the labels with --target, or give the inputs "
        "alone as the file's one array"
    )
