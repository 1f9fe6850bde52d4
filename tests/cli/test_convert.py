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
    assert out.splitlines()[:4] == [
        "converted 1 BatchNormalization -> BatchRenormalization",
        "converted 1 GhostBatchNormalization -> BatchRenormalization",
        "settings of the converted layers: momentum=0.99, epsilon=0.001, "
        "renorm_momentum=0.99, "
        "renorm_clipping=RenormClipping(rmax=3, dmax=5, warmup_steps=5000, "
        "rmax_steps=40000, dmax_steps=25000)",
        f"wrote {out_path}",
    ]
    difference = float(out.splitlines()[4].rsplit(": ", 1)[1])
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
    assert out.splitlines()[:2] == [
        "converted 1 BatchNormalization -> GhostBatchNormalization",
        # Only the converted layer: the default ghost size, said.
        "settings of the converted layers: virtual_batch_size=32, "
        "momentum=0.99, epsilon=0.001",
    ]
    loaded = keras.saving.load_model(out_path)
    assert [type(bn).__name__ for bn in bn_keras.find_batchnorm(loaded)] == [
        "GhostBatchNormalization",
        "GhostBatchNormalization",
    ]
    assert loaded.get_layer("ghost").virtual_batch_size == 4


def _ghost_batch_norm(x, layer, size):
    """Ghost batch normalization written out: consecutive ghost batches of
    `size` samples, each standardized by its own mean and (biased)
    variance."""
    gamma = keras.ops.convert_to_numpy(layer.gamma)
    beta = keras.ops.convert_to_numpy(layer.beta)
    out = []
    for start in range(0, len(x), size):
        ghost = x[start : start + size].astype("float64")
        normalized = (ghost - ghost.mean(0)) / np.sqrt(
            ghost.var(0) + layer.epsilon
        )
        out.append(normalized * gamma + beta)
    return np.concatenate(out)


def test_convert_sets_the_ghost_batch_size(saved, tmp_path, capsys):
    model, path = saved
    out_path = tmp_path / "ghost.keras"
    status, out, err = run_cli(
        capsys, "convert", path, "--to", "ghost", "--virtual-batch-size",
        "8", out_path,
    )
    assert status == 0, err
    assert out.splitlines()[2] == (
        "settings of the converted layers: virtual_batch_size=8, "
        "momentum=0.99, epsilon=0.001"
    )
    loaded = keras.saving.load_model(out_path)
    layers = bn_keras.find_batchnorm(loaded)
    assert [bn.virtual_batch_size for bn in layers] == [8, 8]
    np.testing.assert_allclose(loaded(X), model(X), atol=1e-5)
    # In training, two ghost batches of 8 in a batch of 16.
    h = np.random.default_rng(2).normal(size=(16, 4)).astype("float32")
    bn = loaded.get_layer("bn")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(bn(h, training=True)),
        _ghost_batch_norm(h, bn, 8),
        atol=1e-5,
    )
    # Not one ghost batch of 16 (the test tells the two apart).
    assert not np.allclose(_ghost_batch_norm(h, bn, 8), _ghost_batch_norm(
        h, bn, 16), atol=1e-3)


def test_convert_sets_the_renorm_schedule_and_momenta(saved, tmp_path, capsys):
    _, path = saved
    out_path = tmp_path / "renorm.keras"
    status, out, err = run_cli(
        capsys, "convert", path, "--to", "renorm", "--renorm-steps", "800",
        "--momentum", "0.9", "--renorm-momentum", "none", out_path,
    )
    assert status == 0, err
    assert out.splitlines()[2] == (
        "settings of the converted layers: momentum=0.9, epsilon=0.001, "
        "renorm_momentum=none, renorm_clipping=RenormClipping(rmax=3, "
        "dmax=5, warmup_steps=100, rmax_steps=800, dmax_steps=500)"
    )
    for bn in bn_keras.find_batchnorm(keras.saving.load_model(out_path)):
        assert (bn.momentum, bn.renorm_momentum) == (0.9, None)
        # The paper's schedule over 800 steps: warm-up N/8, dmax final at
        # 5N/8, rmax at N; the paper's final bounds.
        assert bn.renorm_clipping.get_config() == {
            "rmax": 3.0,
            "dmax": 5.0,
            "warmup_steps": 100,
            "rmax_steps": 800,
            "dmax_steps": 500,
        }


@pytest.mark.parametrize(
    "text, clipping",
    [("rmax=2, DMAX=0.5", {"rmax": 2.0, "dmax": 0.5}), ("none", {})],
)
def test_convert_sets_fixed_renorm_clipping(
    saved, tmp_path, capsys, text, clipping
):
    _, path = saved
    out_path = tmp_path / "renorm.keras"
    status, _, err = run_cli(
        capsys, "convert", path, "--to", "renorm", "--renorm-clipping", text,
        out_path,
    )
    assert status == 0, err
    for bn in bn_keras.find_batchnorm(keras.saving.load_model(out_path)):
        assert bn.renorm_clipping == clipping


def test_convert_to_keras_with_another_epsilon(saved, tmp_path, capsys):
    model, path = saved
    out_path = tmp_path / "keras.keras"
    status, out, err = run_cli(
        capsys, "convert", path, "--to", "keras", "--epsilon", "1e-5",
        "--momentum", "0.9", out_path,
    )
    assert status == 0, err
    assert out.splitlines()[2] == (
        "settings of the converted layers: momentum=0.9, epsilon=1e-05"
    )
    loaded = keras.saving.load_model(out_path)
    bn = loaded.get_layer("bn")
    assert type(bn) is keras.layers.BatchNormalization
    assert bn.momentum == 0.9
    # Inference with the new epsilon, written out from the same weights.
    h = np.random.default_rng(3).normal(size=(6, 4)).astype("float32")
    weights = {w.name: keras.ops.convert_to_numpy(w) for w in bn.weights}
    expected = (h - weights["moving_mean"]) / np.sqrt(
        weights["moving_variance"] + 1e-5
    ) * weights["gamma"] + weights["beta"]
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(bn(h)), expected, rtol=1e-5, atol=1e-6
    )
    # The outputs moved (epsilon is part of inference), as printed: on 8
    # random inputs (seed 0).
    difference = float(out.splitlines()[4].rsplit(": ", 1)[1])
    x = np.random.default_rng(0).normal(size=(8, 5)).astype("float32")
    actual = np.max(np.abs(loaded(x) - model(x)))
    assert difference == float(f"{actual:.3g}")
    assert difference > 1e-6


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--to", "ghost", "--virtual-batch-size", "0"],
            "--virtual-batch-size 0: must be a positive integer",
        ),
        (
            ["--to", "ghost", "--virtual-batch-size", "8.5"],
            "--virtual-batch-size 8.5: must be a positive integer",
        ),
        (
            ["--to", "keras", "--virtual-batch-size", "8"],
            "--virtual-batch-size 8: keras.layers.BatchNormalization has no "
            "ghost batches",
        ),
        (
            ["--to", "ghost", "--momentum", "fast"],
            "--momentum fast: must be a finite number or none",
        ),
        (
            ["--to", "keras", "--momentum", "None"],
            "--momentum None: keras.layers.BatchNormalization has no "
            "cumulative averages; give a number",
        ),
        (
            ["--to", "ghost", "--momentum", "1.5"],
            "--momentum 1.5: Argument `momentum` must be a float in [0, 1] "
            "or None. Received: momentum=1.5",
        ),
        (
            ["--to", "batch", "--epsilon", "-1"],
            "--epsilon -1: Argument `epsilon` must be a positive float. "
            "Received: epsilon=-1.0",
        ),
        (
            ["--to", "renorm", "--epsilon", "inf"],
            "--epsilon inf: must be a finite number",
        ),
        (
            ["--to", "ghost", "--renorm-steps", "100"],
            "--renorm-steps 100: only with --to renorm",
        ),
        (
            ["--to", "renorm", "--renorm-clipping", "rmax=3,bound=2"],
            "--renorm-clipping rmax=3,bound=2: expected KEY=VALUE pairs with "
            "the keys rmax, rmin, dmax (e.g. rmax=3,dmax=5), or none",
        ),
        (
            ["--to", "renorm", "--renorm-clipping", "rmax=big"],
            "--renorm-clipping rmax=big: rmax big: must be a finite number",
        ),
        (
            ["--to", "renorm", "--renorm-clipping", "rmax=0.5,rmin=1"],
            "--renorm-clipping rmax=0.5,rmin=1: In `renorm_clipping`, rmax "
            "must be greater than or equal to rmin. Received: rmax=0.5, "
            "rmin=1.0",
        ),
        (
            ["--to", "renorm", "--renorm-clipping", "rmax=3",
             "--renorm-steps", "100"],
            "--renorm-clipping and --renorm-steps: give one of them",
        ),
        (
            ["--to", "renorm", "--renorm-steps", "-4"],
            "--renorm-steps -4: must be a positive integer",
        ),
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
        (
            ["convert", "m.keras", "--to", "ghost", "--virtual-batch-size",
             "0", "out.keras"],
            2,
            "stderr",
            "bn-keras convert: error: --virtual-batch-size 0: must be a "
            "positive integer",
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
