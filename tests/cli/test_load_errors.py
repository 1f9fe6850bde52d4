"""Files that are not what they claim: the error names the real problem,
in one line, with exit status 2."""

import pickle
import zipfile

import keras
import numpy as np
import pytest

from tests.cli.helpers import run_cli

NOT_AN_NPZ = "not a valid .npz archive (numpy.savez writes a zip archive"
PICKLES = (
    "pickled Python objects, and unpickling a file can run any code in it, "
    "so bn-keras does not load it; save numeric arrays instead"
)


def _object_array(path):
    np.savez(path, x=np.array([{"a": 1}] * 12, dtype=object), y=np.ones(12))


def _pickle_file(path):
    path.write_bytes(pickle.dumps({"x": [1, 2, 3]}))


def _text(path):
    path.write_text("x,y\n1,2\n")


def _empty(path):
    path.write_bytes(b"")


def _truncated_zip(path):
    np.savez(path, x=np.ones((12, 2)), y=np.ones(12))
    path.write_bytes(path.read_bytes()[:60])


@pytest.mark.parametrize(
    "make, message",
    [
        (_object_array, "{path}: array 'x' holds " + PICKLES),
        (_pickle_file, "{path}: is a file of " + PICKLES),
        (_text, "{path}: " + NOT_AN_NPZ + " of .npy arrays): not a zip"),
        (_empty, "{path}: " + NOT_AN_NPZ + " of .npy arrays): an empty file"),
        (_truncated_zip, "{path}: " + NOT_AN_NPZ),
    ],
)
def test_npz_files(tmp_path, capsys, make, message):
    path = tmp_path / "data.npz"
    make(path)
    status, _, err = run_cli(
        capsys,
        "compare",
        "--data",
        path,
        "--target",
        "y",
        "--quick",
        "--logdir",
        tmp_path / "runs",
    )
    assert status == 2
    assert err.startswith("bn-keras compare: error: "), err
    assert message.format(path=path) in err
    assert "allow_pickle" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "path, message",
    [
        (
            "noext",
            "--data {path}: a file without an extension; expected a "
            ".csv or .npz file, or a folder of images with one subfolder per "
            "class",
        ),
        ("data.txt", "--data {path}: unknown file type '.txt'"),
        ("absent", "--data {path}: no such file or folder"),
        ("absent.csv", "--data {path}: no such file or folder"),
    ],
)
def test_data_paths(tmp_path, capsys, path, message):
    path = tmp_path / path
    if not path.name.startswith("absent"):
        path.write_text("a,y\n1,2\n")
    status, _, err = run_cli(
        capsys,
        "compare",
        "--data",
        path,
        "--target",
        "y",
        "--quick",
        "--logdir",
        tmp_path / "runs",
    )
    assert status == 2
    assert message.format(path=path) in err


ARCHIVE = "not a valid .keras archive (model.save(...) writes a zip archive"


def _zip_without_config(path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "hello")


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda p: p.write_text("not a model"),
            ARCHIVE + "{x}; this is a text file",
        ),
        (lambda p: p.write_bytes(b""), ARCHIVE + "{x}; this is an empty file"),
        (
            lambda p: p.write_bytes(bytes(range(256))),
            ARCHIVE + "{x}; this is a binary file that is not a zip archive",
        ),
        (
            _zip_without_config,
            ARCHIVE + "{x}; this zip archive has no config.json",
        ),
    ],
)
def test_keras_files(tmp_path, capsys, make, message):
    path = tmp_path / "model.keras"
    make(path)
    status, _, err = run_cli(capsys, "inspect", path)
    assert status == 2
    expected = message.format(x=" with a config.json)")
    assert err == f"bn-keras inspect: error: {path}: {expected}\n"


def test_inspect_loads_without_the_optimizer(tmp_path, capsys):
    """A compiled model saved before training holds an optimizer without
    variables: loading it compiled makes Keras warn, inspecting it not."""
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.BatchNormalization(name="bn")]
    )
    model.compile(optimizer="adam", loss="mse")
    path = tmp_path / "model.keras"
    model.save(path)
    with pytest.warns(UserWarning, match="Skipping variable loading"):
        keras.saving.load_model(path)
    status, out, err = run_cli(capsys, "inspect", path)
    assert status == 0
    assert "1 batch normalization layer" in out
    assert err == ""
