"""`bn-keras convert`: a saved model with its BN layers of another kind."""

import json
import zipfile

import keras
import numpy as np
import pytest

import bn_keras
from bn_keras.cli import convert
from tests.cli.helpers import imported_modules
from tests.cli.helpers import run_cli
from tests.cli.helpers import run_entry_point
from tests.cli.helpers import without_import_times


def small_model():
    """Dense - BN - raw op - Dense - ghost BN, with non-trivial statistics."""
    inputs = keras.Input((5,), name="x")
    h = keras.layers.Dense(4, use_bias=False, name="dense")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h) * 2.0
    h = keras.layers.Dense(3, name="dense_2")(h)
    h = bn_keras.layers.GhostBatchNormalization(
        virtual_batch_size=4, name="ghost"
    )(h)
    model = keras.Model(inputs, h, name="small")
    rng = np.random.default_rng(0)
    for bn in bn_keras.find_batchnorm(model):
        n = bn.moving_mean.shape[0]
        bn.moving_mean.assign(rng.normal(size=n).astype("float32"))
        bn.moving_variance.assign(rng.uniform(0.5, 2, n).astype("float32"))
    return model


@pytest.fixture
def saved(tmp_path):
    model = small_model()
    path = tmp_path / "small.keras"
    model.save(path)
    return model, path


X = np.random.default_rng(1).normal(size=(6, 5)).astype("float32")


def test_convert_to_renorm(saved, tmp_path, capsys):
    model, path = saved
    out_path = tmp_path / "renorm.keras"
    status, out, err = run_cli(
        capsys, "convert", path, "--to", "renorm", out_path
    )
    assert status == 0, err
    assert out.splitlines()[:3] == [
        "converted 1 BatchNormalization -> BatchRenormalization",
        "converted 1 GhostBatchNormalization -> BatchRenormalization",
        f"wrote {out_path}",
    ]
    difference = float(out.splitlines()[3].rsplit(": ", 1)[1])
    assert difference < 1e-5
    loaded = keras.saving.load_model(out_path)
    assert [type(bn).__name__ for bn in bn_keras.find_batchnorm(loaded)] == [
        "BatchRenormalization",
        "BatchRenormalization",
    ]
    np.testing.assert_allclose(loaded(X), model(X), atol=1e-5)


def test_convert_to_keras_warns_and_needs_no_bn_keras(saved, tmp_path, capsys):
    model, path = saved
    out_path = tmp_path / "keras.keras"
    status, out, err = run_cli(
        capsys, "convert", path, "--to", " Keras", out_path
    )
    assert status == 0, err
    assert err.splitlines() == [
        "warning: convert_batchnorm: keras.layers.BatchNormalization has no "
        "ghost batches and no renorm schedule; dropped virtual_batch_size=4 "
        "from 'ghost'. Their weights are kept: inference is unchanged."
    ]
    with zipfile.ZipFile(out_path) as archive:
        config = json.loads(archive.read("config.json"))
    assert "bn_keras" not in json.dumps(config)
    loaded = keras.saving.load_model(out_path)
    np.testing.assert_allclose(loaded(X), model(X), atol=1e-5)


def test_convert_some_layers(saved, tmp_path, capsys):
    _, path = saved
    out_path = tmp_path / "ghost.keras"
    status, out, err = run_cli(
        capsys, "convert", path, "--to", "ghost", "--layers", "bn", out_path
    )
    assert status == 0, err
    assert out.splitlines()[0] == (
        "converted 1 BatchNormalization -> GhostBatchNormalization"
    )
    loaded = keras.saving.load_model(out_path)
    assert [type(bn).__name__ for bn in bn_keras.find_batchnorm(loaded)] == [
        "GhostBatchNormalization",
        "GhostBatchNormalization",
    ]
    assert loaded.get_layer("ghost").virtual_batch_size == 4


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--to", "group"],
            "--to group: unknown; valid names: batch, ghost, keras, renorm",
        ),
        (
            ["--to", "renorm", "--layers", "bn,nope"],
            "cannot convert: Argument `layers` names no batch normalization "
            "layer of the model: ['nope']",
        ),
        (["--to", "renorm", "--layers", "bn,"], "--layers bn,: an empty"),
    ],
)
def test_usage_errors_are_one_line(saved, tmp_path, capsys, argv, message):
    _, path = saved
    out_path = tmp_path / "out.keras"
    status, _, err = run_cli(capsys, "convert", path, *argv, out_path)
    assert status == 2
    assert err.startswith("bn-keras convert: error: ")
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert not out_path.exists()


def test_output_must_be_a_keras_file(saved, tmp_path, capsys):
    _, path = saved
    status, _, err = run_cli(
        capsys, "convert", path, "--to", "renorm", tmp_path / "out.h5"
    )
    assert status == 2
    assert err.strip() == (
        f"bn-keras convert: error: {tmp_path / 'out.h5'}: the output must "
        "be a .keras file"
    )


def test_model_without_batchnorm(tmp_path, capsys):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs + 1.0))
    path = tmp_path / "plain.keras"
    model.save(path)
    status, _, err = run_cli(
        capsys, "convert", path, "--to", "renorm", tmp_path / "out.keras"
    )
    assert status == 2
    assert err.strip() == (
        f"bn-keras convert: error: {path}: the model has no batch "
        "normalization layer"
    )


def test_missing_model_file(tmp_path, capsys):
    path = tmp_path / "absent.keras"
    status, _, err = run_cli(
        capsys, "convert", path, "--to", "renorm", tmp_path / "out.keras"
    )
    assert status == 2
    assert err.strip() == f"bn-keras convert: error: {path}: no such file"


def test_help_names_every_conversion():
    for name in bn_keras.registry.CONVERSIONS:
        assert f"\n  {name} " in convert.DESCRIPTION


@pytest.mark.parametrize(
    "argv, status, stream, text",
    [
        (["convert", "--help"], 0, "stdout", "keras    keras.layers."),
        (
            ["convert", "m.keras", "--to", "group", "out.keras"],
            2,
            "stderr",
            "bn-keras convert: error: --to group: unknown; valid names: "
            "batch, ghost, keras, renorm",
        ),
    ],
)
def test_answers_without_keras(argv, status, stream, text):
    completed = run_entry_point(*argv, PYTHONPROFILEIMPORTTIME=1)
    assert completed.returncode == status, completed.stderr[-3000:]
    assert text in without_import_times(getattr(completed, stream))
    modules = imported_modules(completed.stderr)
    assert "bn_keras.cli.convert" in modules
    assert not {"keras", "tensorflow", "bn_keras.models"} & modules


def test_a_conversion_prints_no_tensorflow_start_up_lines(saved, tmp_path):
    _, path = saved
    completed = run_entry_point(
        "convert", path, "--to", "renorm", tmp_path / "out.keras"
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stderr == ""
    assert completed.stdout.startswith("converted 1 BatchNormalization")
