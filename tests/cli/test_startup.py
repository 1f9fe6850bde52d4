"""`bn-keras` as a user starts it: --help, --version and usage errors
without TensorFlow, and no TensorFlow start-up lines when it runs."""

import subprocess
import sys

import keras
import pytest

from tests.cli.helpers import TF_STARTUP_NOISE
from tests.cli.helpers import entry_point_env
from tests.cli.helpers import imported_modules
from tests.cli.helpers import run_entry_point
from tests.cli.helpers import without_import_times

HEAVY = ("tensorflow", "keras", "jax", "bn_keras.layers", "keras_tuner")


def _heavy_imports(stderr):
    return sorted(
        module
        for module in imported_modules(stderr)
        if module.split(".")[0] in HEAVY or module.startswith(HEAVY)
    )


@pytest.mark.parametrize(
    "argv, status, stream, text",
    [
        (["--help"], 0, "stdout", "usage: bn-keras "),
        (["--version"], 0, "stdout", "bn-keras 0.1.0"),
        (["compare", "--help"], 0, "stdout", "placements (aliases"),
        (["search", "--help"], 0, "stdout", "tuners: random, grid"),
        (["inspect", "--help"], 0, "stdout", "moving mean"),
        (["compare", "--model", "resnet"], 2, "stderr", "invalid choice"),
        (
            ["compare", "--placements", "everywhere"],
            2,
            "stderr",
            "bn-keras compare: error: unknown placement 'everywhere'",
        ),
        (
            ["search", "--epochs", "0"],
            2,
            "stderr",
            "bn-keras search: error: --epochs must be a positive integer",
        ),
        # A wrong model file is answered before Keras starts, too.
        (
            ["inspect", "missing.keras"],
            2,
            "stderr",
            "bn-keras inspect: error: missing.keras: no such file",
        ),
        (
            ["inspect", "missing.keras", "--fold", "folded.h5"],
            2,
            "stderr",
            "error: --fold folded.h5: the output must be a .keras file",
        ),
        (
            ["convert", "missing.keras", "out.keras", "--to", "renorm"],
            2,
            "stderr",
            "bn-keras convert: error: missing.keras: no such file",
        ),
    ],
)
def test_answers_without_tensorflow(argv, status, stream, text):
    completed = run_entry_point(*argv, PYTHONPROFILEIMPORTTIME=1)
    assert completed.returncode == status, completed.stderr[-3000:]
    output = getattr(completed, stream)
    assert text in without_import_times(output)
    assert "bn_keras.cli" in imported_modules(completed.stderr)
    assert _heavy_imports(completed.stderr) == []
    if status == 0:  # nothing but the import times on stderr
        assert without_import_times(completed.stderr).strip() == ""


def test_python_m_bn_keras_answers_without_tensorflow():
    completed = subprocess.run(
        [sys.executable, "-m", "bn_keras", "--version"],
        env=entry_point_env(PYTHONPROFILEIMPORTTIME=1),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.strip() == "bn-keras 0.1.0"
    assert _heavy_imports(completed.stderr) == []


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A compiled model saved before training: its archive holds an
    optimizer without variables, which Keras warns about when it loads
    the optimizer ("Skipping variable loading for optimizer")."""
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(4, name="dense"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Dense(2, name="head"),
        ]
    )
    model.compile(optimizer="adam", loss="mse")
    path = tmp_path_factory.mktemp("model") / "model.keras"
    model.save(path)
    return path


@pytest.mark.slow
def test_a_command_with_tensorflow_prints_only_its_own_lines(saved_model):
    completed = run_entry_point("inspect", saved_model)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "1 batch normalization layer" in completed.stdout
    # Neither TensorFlow's C++ start-up lines nor Keras's warning about
    # the optimizer (inspect loads the model without it).
    assert completed.stderr == ""


@pytest.mark.slow
def test_verbose_shows_what_tensorflow_prints(tmp_path):
    """The filter drops only TensorFlow's lines: with --verbose they
    come back (the test proves the quiet run had some to drop)."""
    completed = run_entry_point(
        "compare",
        "--dataset",
        "wine",
        "--quick",
        "--epochs",
        "1",
        "--placements",
        "none",
        "--verbose",
        "--logdir",
        tmp_path,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert any(noise in completed.stderr for noise in TF_STARTUP_NOISE)
    quiet = run_entry_point(
        "compare",
        "--dataset",
        "wine",
        "--quick",
        "--epochs",
        "1",
        "--placements",
        "none",
        "--logdir",
        tmp_path,
    )
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert not any(noise in quiet.stderr for noise in TF_STARTUP_NOISE)
    assert "Traceback" not in quiet.stderr
