"""Setups that would compare nothing, said so: regression targets in
their own units, batch sizes that defeat BN, classes missing from a split;
and library warnings as one plain line each."""

import warnings

import numpy as np
import pytest

from bn_keras.cli import datasets
from bn_keras.cli import experiment
from bn_keras.cli import runtime
from tests.cli.helpers import read_csv
from tests.cli.helpers import read_scalars
from tests.cli.helpers import run_cli
from tests.cli.helpers import session_dirs


def _prices(path, samples=40, seed=0):
    """A regression target around 1e9, three features."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(samples, 3))
    y = 1e9 + 3e8 * x[:, 0] + 1e7 * rng.normal(size=samples)
    lines = ["a,b,c,price"] + [
        f"{a:.5f},{b:.5f},{c:.5f},{t:.1f}" for (a, b, c), t in zip(x, y)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_regression_target_is_standardized_features_untouched(tmp_path):
    path = _prices(tmp_path / "prices.csv")
    raw = np.loadtxt(path, delimiter=",", skiprows=1)
    data = datasets.load(data=str(path), target="price", seed=0)
    assert data.task == "regression"
    # The training split's own statistics.
    train_targets = data.y_train * data.target_scale + data.target_mean
    assert data.target_mean == pytest.approx(train_targets.mean(), rel=1e-6)
    assert data.target_scale == pytest.approx(train_targets.std(), rel=1e-5)
    assert abs(data.y_train.mean()) < 1e-5
    assert data.y_train.std() == pytest.approx(1.0, abs=1e-5)
    assert data.loss_scale == pytest.approx(data.target_scale**2)
    # Each sample keeps its own target, and its features as they were.
    targets = {tuple(np.round(row[:3], 5)): row[3] for row in raw}
    for features, y in zip(data.x_val, data.y_val):
        original = targets[tuple(np.round(features.astype("float64"), 5))]
        back = y * data.target_scale + data.target_mean
        assert back == pytest.approx(original, rel=1e-6)
    assert (
        f"target standardized for training: mean {data.target_mean:.4g}, "
        f"std {data.target_scale:.4g}; losses shown in the target's units"
    ) in data.describe()


def test_histories_in_the_target_units():
    data = datasets.load("scales")
    history = {"loss": [1.0, 0.5], "val_loss": [2.0], "mae": [0.5]}
    converted = experiment.in_target_units(history, data)
    scale = data.target_scale**2
    assert converted == {
        "loss": [scale, 0.5 * scale],
        "val_loss": [2.0 * scale],
        "mae": [0.5],
    }
    digits = datasets.load("digits")
    assert experiment.in_target_units(history, digits) == history


def test_constant_target_is_an_error(tmp_path):
    path = tmp_path / "flat.csv"
    path.write_text("a,y\n" + "".join(f"{i},7.5\n" for i in range(30)))
    with pytest.raises(datasets.UsageError, match="the target is constant"):
        datasets.load(data=str(path), target="y", task="regression")


@pytest.mark.slow
def test_compare_reports_losses_in_the_target_units(tmp_path, capsys):
    path = _prices(tmp_path / "prices.csv", samples=80)
    status, out, err = run_cli(
        capsys,
        "compare",
        "--data",
        path,
        "--target",
        "price",
        "--quick",
        "--epochs",
        "3",
        "--batch-size",
        "8",
        "--placements",
        "layer-bn-act",
        "--logdir",
        tmp_path / "runs",
    )
    assert status == 0, err
    assert "regression (target standardized for training" in out
    data = datasets.load(data=str(path), target="price")
    (session,) = session_dirs(tmp_path / "runs", "compare-prices.csv")
    session = tmp_path / "runs" / session
    for row in read_csv(session / "leaderboard.csv"):
        # TensorBoard has the target's units too, as the leaderboard: the
        # figure the run is ranked by is the same everywhere.
        logged = read_scalars(session / row["run_dir"])
        curve = [logged["epoch/val_loss"][step] for step in (1, 2, 3)]
        assert float(row["best_val_loss"]) == pytest.approx(
            min(curve), rel=1e-4
        )
        assert float(row["best_val_loss"]) == pytest.approx(
            logged["epoch/best_val_loss"][3], rel=1e-4
        )
        assert data.loss_scale > 1e14  # not the standardized loss
        assert float(row["best_val_loss"]) > 1e14  # (3e8)^2-sized errors


def _dataset(train, val=10, classes=2):
    x = np.zeros((train + val, 4), "float32")
    y = np.arange(train + val) % classes
    return datasets.Dataset(
        name="small",
        x_train=x[:train],
        y_train=y[:train],
        x_val=x[train:],
        y_val=y[train:],
        task="classification",
        num_classes=classes,
        class_names=tuple(str(c) for c in range(classes)),
    )


def test_batch_warnings():
    assert experiment.batch_warnings(_dataset(100), 32, 8) == []
    (large,) = experiment.batch_warnings(_dataset(30), 512)
    assert large == (
        "--batch-size 512 is larger than the 30 training samples: every "
        "step trains on all of them (one step per epoch, a batch of 30); "
        "give a --batch-size smaller than 30 for several steps per epoch"
    )
    large, ghost = experiment.batch_warnings(_dataset(30), 512, 128)
    assert ghost == (
        "ghost batches of 128 samples are not smaller than the real batch "
        "of 30: 'ghost' trains as plain batch normalization; give a "
        "--ghost-batch-size smaller than 30"
    )
    (ghost,) = experiment.batch_warnings(_dataset(100), 32, 32)
    assert ghost.startswith("ghost batches of 32 samples are not smaller")


def test_compare_warns_about_batch_sizes(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(
        experiment.Comparison, "run", lambda self, session, progress: []
    )
    path = _prices(tmp_path / "prices.csv")
    status, _, err = run_cli(
        capsys,
        "compare",
        "--data",
        path,
        "--target",
        "price",
        "--quick",
        "--batch-size",
        "512",
        "--normalizations",
        "ghost",
        "--ghost-batch-size",
        "128",
        "--logdir",
        tmp_path / "runs",
    )
    assert status == 0, err
    lines = err.splitlines()
    assert (
        "warning: --batch-size 512 is larger than the 30 training samples: "
        "every step trains on all of them" in err
    )
    assert any(
        line.startswith("warning: ghost batches of 128 samples are not")
        for line in lines
    )
    assert ".py:" not in err  # no file path


def test_a_class_missing_from_a_split_is_warned_about(tmp_path):
    path = tmp_path / "rare.csv"
    rows = [f"{i},{'common' if i else 'rare'}" for i in range(40)]
    path.write_text("x,label\n" + "\n".join(rows) + "\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = datasets.load(data=str(path), target="label", seed=0)
    missing = data.missing_classes()
    (split,) = [name for name, classes in missing.items() if classes]
    assert missing[split] == ["rare"]
    (warning,) = caught
    assert str(warning.message).startswith(
        f"the {split} split has no sample of class 'rare' (40 samples in all): "
    )


def test_plain_warnings(capsys):
    before = warnings.showwarning
    with runtime.plain_warnings():
        for _ in range(2):
            warnings.warn("first line\n   and its   continuation", stacklevel=1)
        warnings.warn("another", RuntimeWarning, stacklevel=1)
    err = capsys.readouterr().err
    assert err == (
        "warning: first line and its continuation\nwarning: another\n"
    )
    assert warnings.showwarning is before


@pytest.mark.slow
@pytest.mark.tensorflow_only
def test_search_warnings_are_plain_lines(tmp_path, capsys):
    status, _, err = run_cli(
        capsys,
        "search",
        "--quick",
        "--trials",
        "1",
        "--epochs",
        "1",
        "--placements",
        "none",
        "--logdir",
        tmp_path,
    )
    assert status == 0, err
    lines = [line for line in err.splitlines() if "BatchNormMonitor" in line]
    assert lines == [
        "warning: BatchNormMonitor: the model has no batch normalization "
        "layer; only its epoch metrics will be logged (for the Overview's "
        "comparison of runs)."
    ]
    assert "UserWarning" not in err and ".py:" not in err
