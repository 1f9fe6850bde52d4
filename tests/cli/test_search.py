"""`bn-keras search` end to end in quick mode, and its usage errors."""

import os
import re

import keras
import numpy as np
import pytest

import bn_keras
from bn_keras.cli import datasets
from bn_keras.cli import experiment
from bn_keras.cli import tuning
from tests.callbacks.helpers import read_layout
from tests.cli.helpers import assert_png
from tests.cli.helpers import event_files
from tests.cli.helpers import read_csv
from tests.cli.helpers import read_scalars
from tests.cli.helpers import run_cli
from tests.cli.helpers import session_dirs
from tests.tuner.helpers import hparams_experiments
from tests.tuner.helpers import hparams_sessions


@pytest.mark.slow
@pytest.mark.tensorflow_only
def test_search_placement_hypermodel(tmp_path, capsys):
    status, out, err = run_cli(
        capsys,
        "search",
        "--quick",
        "--trials",
        "2",
        "--epochs",
        "2",
        "--placements",
        "layer-bn-act",
        "none",
        "--normalizations",
        "batch",
        "renorm",
        "--logdir",
        tmp_path,
    )
    assert status == 0, err
    (session,) = session_dirs(tmp_path, "search-digits")
    session = tmp_path / session
    assert "random search, 2 trials x 2 epochs" in out
    assert "Batch normalization placements" in out
    assert "2 completed trial(s), best first" in out
    assert out.rstrip().splitlines()[-1].strip() == (
        f"tensorboard --logdir {session / 'logs'}"
    )

    # One TensorBoard run per trial, named as the report names it: Keras's
    # epoch metrics, the BN monitor's figures and the trial's HParams
    # session, in one event file; its row in HParams is `trial_<id>`.
    logs = session / "logs"
    runs = sorted(name for name in os.listdir(logs) if (logs / name).is_dir())
    assert len(runs) == 2
    for run_dir in runs:
        # One slot (the output layer gets no BN after it) and the input BN.
        assert re.fullmatch(
            r"trial_\d-(input-bn_)?(layer-bn-act\.(batch|renorm)|layer-act)",
            run_dir,
        ), run_dir
        # The training's event file, then the Overview's layout naming
        # the leaderboard's first, written once the trials are ranked.
        assert len(event_files(logs / run_dir)) == 2
        assert not [p for p in (logs / run_dir).iterdir() if p.is_dir()]
        scalars = read_scalars(logs / run_dir)
        assert sorted(scalars["epoch/val_accuracy"]) == [1, 2]
        ((group, _),) = hparams_sessions(logs / run_dir)
        assert group == run_dir.split("-", 1)[0]
        assert f"{run_dir.split('-', 1)[0]}-" in out
        (experiment,) = hparams_experiments(logs / run_dir)
        assert experiment["metrics"][:4] == [
            ("", "epoch/best_val_accuracy"),
            ("", "epoch/val_accuracy"),
            ("", "alerts/unhealthy_layers"),
            ("", "batchnorm/max_probe_gap"),
        ]
    assert not hparams_experiments(logs)

    # The best model is saved, loads, and is the best trial's.
    best = keras.saving.load_model(session / "best_model.keras")
    layers = bn_keras.find_batchnorm(best)
    kinds = {type(layer).__name__ for layer in layers}
    assert kinds <= {"BatchNormalization", "BatchRenormalization"}
    line = next(line for line in out.splitlines() if line.startswith("best"))
    score = float(line.split()[-1])
    data = datasets.load("digits", seed=0)
    accuracy = best.evaluate(data.x_val, data.y_val, verbose=0)[1]
    assert accuracy == pytest.approx(score, abs=6e-5)
    status, inspected, err = run_cli(
        capsys, "inspect", session / "best_model.keras"
    )
    assert status == 0, err
    assert f"{len(layers)} batch normalization layer" in inspected

    # The trials' leaderboard and plot, as compare writes them.
    rows = read_csv(session / "leaderboard.csv")
    # Each row: its trial's id, and its run, named as above.
    assert sorted(row["trial"] for row in rows) == sorted(
        run.split("-")[0].removeprefix("trial_") for run in runs
    )
    assert sorted(row["run_dir"] for row in rows) == runs
    assert float(rows[0]["best_val_accuracy"]) == pytest.approx(score, abs=6e-5)
    for row in rows:
        scalars = read_scalars(session / "logs" / row["run_dir"])
        logged = scalars["epoch/val_accuracy"]
        assert float(row["best_val_accuracy"]) == pytest.approx(
            max(logged.values()), abs=1e-6
        )
        assert float(row["best_val_accuracy"]) == pytest.approx(
            scalars["epoch/best_val_accuracy"][2], abs=1e-6
        )
        assert row["epochs"] == "2"
        assert "/placement=" in row["hyperparameters"]
    assert_png(session / "validation_curves.png", width=1200, height=500)

    # The Overview names the leaderboard's first in every run.
    first = rows[0]
    for run_dir in runs:
        (title,) = [
            chart.title
            for chart in read_layout(logs / run_dir).category[0].chart
            if list(chart.multiline.tag) == ["^epoch/best_val_accuracy$"]
        ]
        assert title.startswith(
            "best validation accuracy so far; #1 in the leaderboard: "
            f"{first['run_dir']}, {float(first['best_val_accuracy']):.4f} "
            f"at epoch {first['best_epoch']}; its BN ends "
        ), title


@pytest.mark.slow
@pytest.mark.tensorflow_only
def test_search_ready_made_mlp_regression(tmp_path, capsys):
    status, out, err = run_cli(
        capsys,
        "search",
        "--dataset",
        "scales",
        "--hypermodel",
        "mlp",
        "--tuner",
        "grid",
        "--quick",
        "--trials",
        "2",
        "--epochs",
        "1",
        "--placements",
        "layer-bn-act",
        "--normalizations",
        "batch",
        "--logdir",
        tmp_path,
    )
    assert status == 0, err
    assert "scales: 1500 train / 500 validation samples" in out
    assert "hypermodel mlp, grid search, 2 trials x 1 epochs" in out
    # The objective's header: its name, its direction below.
    header = [line for line in out.splitlines() if line.startswith("┃")]
    assert "val_loss" in header[-2] and "(min)" in header[-1]
    assert "block_0" in out
    (session,) = session_dirs(tmp_path, "search-scales")
    session = tmp_path / session
    # The best model predicts in the target's units: its error on the raw
    # targets is the leaderboard's best validation loss.
    best = keras.saving.load_model(session / "best_model.keras", compile=False)
    data = datasets.load("scales", seed=0)
    raw = data.y_val * data.target_scale + data.target_mean
    predicted = best.predict(data.x_val, verbose=0)[:, 0]
    (first, *_) = read_csv(session / "leaderboard.csv")
    assert float(first["best_val_loss"]) == pytest.approx(
        float(np.mean((predicted - raw) ** 2)), rel=1e-3
    )
    assert float(first["best_val_loss"]) > 1.0  # not the standardized loss


def test_shared_placements_that_build_one_network_are_searched_once():
    """With one choice for every layer, pre-activation builds layer-bn-act's
    network on compare's chains: one of them is searched; on a model with
    a residual connection, both."""
    keras.utils.set_random_seed(0)
    base = experiment.build_base_model("mlp", datasets.load("wine"))
    searched, merged = tuning.shared_placements(
        base, bn_keras.registry.PLACEMENTS, ("batch", "renorm")
    )
    assert searched == ("layer-bn-act", "layer-act-bn", "layer-act")
    assert [(c.placement, c.same_as) for c in merged] == [
        ("layer-bn-act", ("bn-act-layer",))
    ]
    inputs = keras.Input((6,))
    h = keras.layers.Dense(8, activation="relu")(inputs)
    h = keras.layers.Add()([h, keras.layers.Dense(8, activation="relu")(h)])
    residual = keras.Model(inputs, keras.layers.Dense(3)(h))
    searched, merged = tuning.shared_placements(
        residual, ("bn-act-layer", "layer-bn-act"), ("batch",)
    )
    assert (searched, merged) == (("bn-act-layer", "layer-bn-act"), [])


@pytest.mark.slow
@pytest.mark.tensorflow_only
def test_search_shared_grid_trains_one_network_once(tmp_path, capsys):
    status, out, err = run_cli(
        capsys,
        "search",
        "--quick",
        "--shared",
        "--tuner",
        "grid",
        "--trials",
        "2",
        "--epochs",
        "1",
        "--placements",
        "bn-act-layer",
        "layer-bn-act",
        "--normalizations",
        "batch",
        "--logdir",
        tmp_path,
    )
    assert status == 0, err
    note = out[out.index("note: on this model") : out.index("Batch norm")]
    assert " ".join(note.split()) == (
        "note: on this model, a chain without residual connections, "
        "pre-activation (bn-act-layer) builds the same network as "
        "layer-bn-act: searched once, as bn-act-layer."
    )
    (session,) = session_dirs(tmp_path, "search-digits")
    rows = read_csv(tmp_path / session / "leaderboard.csv")
    assert len(rows) == 2
    for row in rows:
        assert "batchnorm/placement=bn-act-layer" in row["hyperparameters"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--tuner", "annealing"], "invalid choice: 'annealing'"),
        (["--trials", "0"], "--trials must be a positive integer; got 0"),
        (
            ["--placements", "everywhere"],
            "unknown placement 'everywhere'. Valid placements: layer-bn-act",
        ),
        (
            ["--normalizations", "layer"],
            (
                "unknown normalization 'layer'. Valid normalizations: "
                "batch, ghost, renorm"
            ),
        ),
        (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
        (
            ["--dataset", "wine", "--hypermodel", "cnn"],
            "--hypermodel cnn needs image data",
        ),
        (
            ["--tuner", "hyperband", "--epochs", "1"],
            "--tuner hyperband needs --epochs of at least 2",
        ),
    ],
)
def test_search_usage_errors(argv, message, tmp_path, capsys):
    logdir = tmp_path / "runs"
    status, _, err = run_cli(
        capsys, "search", *argv, "--quick", "--logdir", logdir
    )
    assert status == 2
    assert message in err
    assert not logdir.exists()
