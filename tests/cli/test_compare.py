"""`bn-keras compare` end to end in quick mode, and its usage errors."""

import contextlib
import io
import math
import os

import numpy as np
import pytest

from bn_keras.cli import main
from tests.callbacks.helpers import LAYOUT_TAG
from tests.callbacks.helpers import read_events
from tests.cli.helpers import assert_png
from tests.cli.helpers import event_files
from tests.cli.helpers import read_csv
from tests.cli.helpers import read_scalars
from tests.cli.helpers import run_cli
from tests.cli.helpers import session_dirs
from tests.tuner.helpers import hparams_experiments
from tests.tuner.helpers import hparams_sessions

EPOCHS = 2
#: On compare's MLP, a chain, pre-activation builds layer-bn-act's network:
#: the 5 configurations asked for are 3 networks, trained once each.
LABELS = {
    "no-bn": "no BN",
    "layer-bn-act=bn-act-layer_batch": "layer-bn-act = bn-act-layer + batch",
    "layer-bn-act=bn-act-layer_ghost": (
        "layer-bn-act = bn-act-layer + ghost(8)"
    ),
}


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """One quick comparison on digits: 5 configurations of 2 epochs, of
    which 3 are distinct networks."""
    logdir = tmp_path_factory.mktemp("compare") / "runs"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(
            [
                "compare",
                "--quick",
                "--epochs",
                str(EPOCHS),
                # An alias, and a comma-separated list: both accepted.
                "--placements",
                "before_activation,pre_activation",
                "--normalizations",
                "batch",
                "GHOST",
                "--logdir",
                str(logdir),
            ]
        )
    (session,) = session_dirs(logdir, "compare-digits")
    return {
        "status": status,
        "out": out.getvalue(),
        "err": err.getvalue(),
        "logdir": logdir,
        "session": logdir / session,
    }


@pytest.mark.slow
def test_compare_exits_zero_and_ends_with_tensorboard_command(digits_run):
    assert digits_run["status"] == 0, digits_run["err"]
    lines = digits_run["out"].rstrip().splitlines()
    assert lines[-1].strip() == f"tensorboard --logdir {digits_run['session']}"
    assert (
        "3 configurations (5 asked for: some build the same network) x 2 "
        "epochs" in digits_run["out"]
    )
    # 2 epochs of 43 steps: shorter than the moving statistics' horizon.
    assert "note: 86 training steps in all" in digits_run["out"]
    # The progress bar goes to stderr, and ends complete: one step per
    # network trained.
    assert "3/3" in digits_run["err"]


@pytest.mark.slow
def test_compare_leaderboard_csv(digits_run):
    rows = read_csv(digits_run["session"] / "leaderboard.csv")
    assert [row["rank"] for row in rows] == ["1", "2", "3"]
    assert {row["run_dir"]: row["configuration"] for row in rows} == LABELS
    # The placement column names both placements, as HParams does.
    assert sorted(row["placement"] for row in rows) == [
        "layer-bn-act = bn-act-layer",
        "layer-bn-act = bn-act-layer",
        "none",
    ]
    best = [float(row["best_val_accuracy"]) for row in rows]
    assert best == sorted(best, reverse=True)
    for row in rows:
        assert row["epochs"] == str(EPOCHS)
        assert (
            1
            <= int(row["epochs_to_95pct_of_best"])
            <= int(row["best_epoch"])
            <= EPOCHS
        )
        assert float(row["seconds_per_epoch"]) > 0
        assert 0.0 < float(row["best_val_accuracy"]) <= 1.0
    no_bn = next(row for row in rows if row["run_dir"] == "no-bn")
    assert (no_bn["placement"], no_bn["normalization"]) == ("none", "none")


@pytest.mark.slow
def test_compare_leaderboard_matches_tensorboard_logs(digits_run):
    """The CSV's figures are those logged in each run, where epochs are
    counted from 1 as in the CSV; the run's best value so far ends on
    the CSV's."""
    for row in read_csv(digits_run["session"] / "leaderboard.csv"):
        scalars = read_scalars(digits_run["session"] / row["run_dir"])
        curve = scalars["epoch/val_accuracy"]
        assert sorted(curve) == list(range(1, EPOCHS + 1))
        values = [curve[step] for step in range(1, EPOCHS + 1)]
        np.testing.assert_allclose(
            float(row["best_val_accuracy"]),
            scalars["epoch/best_val_accuracy"][EPOCHS],
            rtol=1e-6,
        )
        np.testing.assert_allclose(
            float(row["best_val_accuracy"]), max(values), rtol=1e-5
        )
        np.testing.assert_allclose(
            float(row["final_val_accuracy"]), values[-1], rtol=1e-5
        )
        assert int(row["best_epoch"]) == values.index(max(values)) + 1
        threshold = 0.95 * max(values)
        assert int(row["epochs_to_95pct_of_best"]) == next(
            i + 1 for i, v in enumerate(values) if v >= threshold
        )


@pytest.mark.slow
def test_compare_printed_table(digits_run):
    out = digits_run["out"]
    rows = read_csv(digits_run["session"] / "leaderboard.csv")
    lines = [
        line
        for line in out.splitlines()
        if line.strip()[:1].isdigit() and "+" in line or "no BN" in line
    ]
    # The figures' headers on two lines: "best" above "val acc".
    header = next(line for line in out.splitlines() if "val acc" in line)
    assert header.split()[:3] == ["#", "configuration", "val"]
    assert all(len(line) <= 100 for line in [header, *lines])
    table = [line.split() for line in lines]
    # One printed row per configuration, in leaderboard order.
    printed = [" ".join(cells[1:-5]) for cells in table]
    assert printed == [row["configuration"] for row in rows]
    for cells, row in zip(table, rows):
        assert cells[0] == row["rank"]
        assert float(cells[-5]) == pytest.approx(
            float(row["best_val_accuracy"]), abs=5e-5
        )
        assert cells[-4] == row["best_epoch"]
    # Why one row names two placements, under the table, in 100 columns.
    note = out[out.index("note: on this model") : out.index("leaderboard:")]
    assert " ".join(note.split()) == (
        "note: on this model, a chain without residual connections, "
        "pre-activation (bn-act-layer) builds the same network as "
        "layer-bn-act: trained once, one row."
    )
    assert all(len(line) <= 100 for line in note.splitlines())
    session = str(digits_run["session"])
    assert f"leaderboard:  {os.path.join(session, 'leaderboard.csv')}" in out
    plot = os.path.join(session, "validation_curves.png")
    assert f"plot:         {plot}" in out


@pytest.mark.slow
def test_compare_plot_is_a_png(digits_run):
    assert_png(
        digits_run["session"] / "validation_curves.png", width=1200, height=500
    )


@pytest.mark.slow
def test_compare_run_folders_and_event_files(digits_run):
    session = digits_run["session"]
    assert sorted(
        name for name in os.listdir(session) if (session / name).is_dir()
    ) == sorted(LABELS)
    epochs = list(range(1, EPOCHS + 1))
    for name in LABELS:
        # One run per configuration, no subfolder: the training's event
        # file, then the Overview's layout retitled once ranked, alone.
        training, ranked = sorted(event_files(session / name))
        assert list(read_events(str(session / name / ranked))) == [LAYOUT_TAG]
        assert not [p for p in (session / name).iterdir() if p.is_dir()]
        # The monitor's figures, one step per epoch counted from 1, with
        # Keras's epoch metrics that the Overview compares; the baseline
        # without BN has those only.
        scalars = read_scalars(session / name)
        for metric in ("epoch/val_accuracy", "epoch/val_loss"):
            assert sorted(scalars[metric]) == epochs
        if name == "no-bn":
            # No gap, no drift, no unhealthy layer: 0, so that the
            # baseline keeps its place in the charts and in HParams.
            assert sorted(scalars) == [
                "alerts/unhealthy_layers",
                "batchnorm/max_drift_in_std",
                "batchnorm/max_probe_gap",
                "batchnorm/nonfinite_layers",
                "epoch/accuracy",
                "epoch/best_val_accuracy",
                "epoch/loss",
                "epoch/val_accuracy",
                "epoch/val_loss",
            ]
            assert scalars["batchnorm/max_probe_gap"] == {1: 0.0, 2: 0.0}
            continue
        steps = scalars["batchnorm/max_drift_in_std"]
        assert sorted(steps) == epochs
        assert any(tag.endswith("/1_probe_gap") for tag in scalars)
        # The text summary says why the run stands for two placements.
        texts = read_events(session / name)["batchnorm/layers"]
        text = texts[max(texts)].item().decode()
        assert (
            "Trained once for layer-bn-act and bn-act-layer: on this model, "
            "a chain without residual connections, pre-activation "
            "(bn-act-layer) builds the same network as layer-bn-act."
        ) in text
        assert "| placement | layer-bn-act = bn-act-layer |" in text


@pytest.mark.slow
def test_compare_hparams_experiment_and_sessions(digits_run):
    """One HParams session per configuration, in its run folder with the
    experiment config (the same in every run: no run holds it alone):
    placement, normalization, then the rest, every one in every session
    ("none" where it does not apply); the objective's best value first
    among the metrics, then its final value, all in the run itself."""
    session = digits_run["session"]
    assert not hparams_experiments(session)
    rows = {
        row["run_dir"]: row for row in read_csv(session / "leaderboard.csv")
    }
    for name in LABELS:
        (experiment,) = hparams_experiments(session / name)
        assert experiment["display_names"] == [
            "placement",
            "normalization",
            "momentum",
            "ghost batch size",
        ]
        assert experiment["hparams"][0] == "01.placement"
        assert experiment["metrics"] == [
            ("", "epoch/best_val_accuracy"),
            ("", "epoch/val_accuracy"),
            ("", "alerts/unhealthy_layers"),
            ("", "batchnorm/max_probe_gap"),
            ("", "batchnorm/max_drift_in_std"),
            ("", "epoch/val_loss"),
            ("", "batchnorm/min_moving_variance"),
            ("", "batchnorm/nonfinite_layers"),
            ("", "epoch/accuracy"),
            ("", "epoch/loss"),
        ]
        ((group, values),) = hparams_sessions(session / name)
        assert group == name
        bn = name != "no-bn"
        assert values == {
            "01.placement": rows[name]["placement"],
            "02.normalization": rows[name]["normalization"],
            "03.momentum": "0.99" if bn else "none",
            "04.ghost batch size": "8" if name.endswith("_ghost") else "none",
        }


@pytest.mark.slow
def test_second_compare_keeps_the_first_runs(digits_run):
    logdir = digits_run["logdir"]
    first = digits_run["session"]
    before = {
        path: os.path.getsize(path)
        for path in (str(p) for p in first.rglob("*") if p.is_file())
    }
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(
            [
                "compare",
                "--quick",
                "--epochs",
                "1",
                "--placements",
                "none",
                "--logdir",
                str(logdir),
            ]
        )
    assert status == 0, err.getvalue()
    sessions = session_dirs(logdir, "compare-digits")
    assert len(sessions) == 2 and first.name in sessions
    (second,) = [logdir / s for s in sessions if s != first.name]
    after = {
        path: os.path.getsize(path)
        for path in (str(p) for p in first.rglob("*") if p.is_file())
    }
    assert after == before
    assert [row["run_dir"] for row in read_csv(second / "leaderboard.csv")] == [
        "no-bn"
    ]


@pytest.mark.slow
def test_compare_regression_ranks_by_lowest_loss(tmp_path, capsys):
    status, out, err = run_cli(
        capsys,
        "compare",
        "--dataset",
        "scales",
        "--quick",
        "--epochs",
        "2",
        "--placements",
        "layer-bn-act",
        "--logdir",
        tmp_path,
    )
    assert status == 0, err
    (session,) = session_dirs(tmp_path, "compare-scales")
    rows = read_csv(tmp_path / session / "leaderboard.csv")
    assert len(rows) == 2 and "best_val_loss" in rows[0]
    losses = [float(row["best_val_loss"]) for row in rows]
    assert losses == sorted(losses)
    assert all(math.isfinite(v) and v > 0 for v in losses)
    assert "regression" in out and "val loss" in out
    assert_png(tmp_path / session / "validation_curves.png")
    # The runs' losses are in the target's units, as the leaderboard's
    # (to its 6 significant digits).
    for row in rows:
        scalars = read_scalars(tmp_path / session / row["run_dir"])
        np.testing.assert_allclose(
            scalars["epoch/best_val_loss"][2],
            float(row["best_val_loss"]),
            rtol=5e-6,
        )
        np.testing.assert_allclose(
            scalars["epoch/val_loss"][2],
            float(row["final_val_loss"]),
            rtol=5e-6,
        )


@pytest.mark.slow
def test_compare_input_batchnorm_configurations(tmp_path, capsys):
    """`--input-batchnorm`: every configuration once per input
    normalization, each a row of the leaderboard and a run of its own."""
    status, out, err = run_cli(
        capsys,
        "compare",
        "--dataset",
        "scales",
        "--quick",
        "--epochs",
        "2",
        "--placements",
        "layer-bn-act",
        "--input-batchnorm",
        "none",
        "batch,RENORM",
        "--logdir",
        tmp_path,
    )
    assert status == 0, err
    assert "6 configurations x 2 epochs" in out
    (session,) = session_dirs(tmp_path, "compare-scales")
    session = tmp_path / session
    rows = read_csv(session / "leaderboard.csv")
    assert {row["run_dir"]: row["configuration"] for row in rows} == {
        "no-bn": "no BN",
        "layer-bn-act_batch": "layer-bn-act + batch",
        "input-batch_no-bn": "input batch",
        "input-batch_layer-bn-act_batch": "input batch + layer-bn-act + batch",
        "input-renorm_no-bn": "input renorm",
        "input-renorm_layer-bn-act_batch": (
            "input renorm + layer-bn-act + batch"
        ),
    }
    assert all(math.isfinite(float(row["best_val_loss"])) for row in rows)
    # The monitor watches every configuration with a BN, the input's too;
    # the baseline's run holds its epoch metrics only, for the Overview.
    baseline = read_scalars(session / "no-bn")
    assert sorted(baseline) == [
        "alerts/unhealthy_layers",
        "batchnorm/max_drift_in_std",
        "batchnorm/max_probe_gap",
        "batchnorm/nonfinite_layers",
        "epoch/best_val_loss",
        "epoch/loss",
        "epoch/val_loss",
    ]
    assert sorted(baseline["epoch/val_loss"]) == [1, 2]
    scalars = read_scalars(session / "input-renorm_no-bn")
    (drift,) = [tag for tag in scalars if tag.endswith("max_drift_in_std")]
    assert sorted(scalars[drift]) == [1, 2]
    # The input normalization is a column of HParams of its own.
    ((_, values),) = hparams_sessions(session / "input-renorm_no-bn")
    assert values == {
        "01.placement": "none",
        "02.normalization": "none",
        "03.input normalization": "renorm",
        "04.momentum": "0.99",
    }


@pytest.mark.slow
def test_compare_on_a_csv_file(tmp_path, capsys):
    rng = np.random.default_rng(0)
    path = tmp_path / "data.csv"
    lines = ["x1,label,x2"]
    for _ in range(80):
        a, b = rng.normal(size=2)
        lines.append(f"{a:.4f},{'yes' if a + b > 0 else 'no'},{b:.4f}")
    path.write_text("\n".join(lines) + "\n")
    status, out, err = run_cli(
        capsys,
        "compare",
        "--data",
        path,
        "--target",
        "label",
        "--quick",
        "--epochs",
        "1",
        "--placements",
        "layer-bn-act",
        "--batch-size",
        "16",
        "--logdir",
        tmp_path / "runs",
    )
    assert status == 0, err
    assert (
        "data.csv: 60 train / 20 validation samples, 2 features, 2 classes"
        in out
    )
    (session,) = session_dirs(tmp_path / "runs", "compare-data.csv")
    assert len(read_csv(tmp_path / "runs" / session / "leaderboard.csv")) == 2


# -- usage errors -------------------------------------------------------------


def _write(path, text):
    path.write_text(text)
    return path


ERRORS = {
    "unknown dataset": (
        ["--dataset", "imagenet"],
        (
            "unknown dataset 'imagenet'. Valid datasets: digits, wine, "
            "breast_cancer, scales, mnist, fashion_mnist, cifar10"
        ),
    ),
    "unknown placement": (
        ["--placements", "layer-bn-act", "after_dense"],
        (
            "unknown placement 'after_dense'. Valid placements: layer-bn-act "
            "(or before_activation), layer-act-bn (or after_activation), "
            "bn-act-layer (or pre_activation), layer-act (or none)"
        ),
    ),
    "unknown normalization": (
        ["--normalizations", "batch", "group"],
        (
            "unknown normalization 'group'. Valid normalizations: batch, "
            "ghost, renorm"
        ),
    ),
    "unknown input normalization": (
        ["--input-batchnorm", "none", "layer"],
        (
            "unknown input normalization 'layer'. Valid input "
            "normalizations: none, batch, renorm"
        ),
    ),
    "dataset and data": (
        ["--dataset", "wine", "--data", "x.csv", "--target", "y"],
        "give either --dataset or --data, not both",
    ),
    "data without target": (
        ["--data", "{tmp}/x.csv"],
        "--data {tmp}/x.csv needs --target",
    ),
    "target without data": (["--target", "y"], "--target goes with --data"),
    "zero epochs": (
        ["--epochs", "0"],
        "--epochs must be a positive integer; got 0",
    ),
    "momentum out of range": (
        ["--momentum", "1"],
        "--momentum must be in [0, 1); got 1.0",
    ),
    "ghost too large": (
        ["--normalizations", "ghost", "--ghost-batch-size", "32"],
        "--ghost-batch-size 32 must be smaller than --batch-size 32",
    ),
    "cnn on tabular data": (
        ["--dataset", "wine", "--model", "cnn"],
        "--model cnn needs image data",
    ),
    "missing file": (
        ["--data", "{tmp}/absent.csv", "--target", "y"],
        "--data {tmp}/absent.csv: no such file or folder",
    ),
    "missing folder": (
        ["--data", "{tmp}/my_images"],
        "--data {tmp}/my_images: no such file or folder",
    ),
    "limit too small": (["--limit", "9"], "--limit must be at least 10"),
    "image size without a folder": (
        ["--image-size", "32"],
        "--image-size goes with --data FOLDER",
    ),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_compare_usage_errors(case, tmp_path, capsys):
    argv, message = ERRORS[case]
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    message = message.replace("{tmp}", str(tmp_path))
    (tmp_path / "x.csv").write_text("a,y\n" + "1,0\n" * 12)
    logdir = tmp_path / "runs"
    status, _, err = run_cli(
        capsys, "compare", *argv, "--quick", "--logdir", logdir
    )
    assert status == 2
    assert err.startswith("bn-keras compare: error: "), err
    assert message in err
    assert not logdir.exists()  # nothing written, nothing trained


CSV_ERRORS = {
    "empty": ("", "{path}: the file is empty"),
    "no header": (
        "1,2,3\n4,5,6\n",
        "{path}: the first line must be a header naming the columns",
    ),
    "missing target": (
        "a,b,c\n" + "1,2,3\n" * 12,
        "{path}: no column 'label' for --target; the columns are: a, b, c",
    ),
    "ragged row": (
        "a,label\n" + "1,0\n" * 5 + "1\n" + "1,0\n" * 6,
        "{path}: line 7 has 1 fields, the header has 2",
    ),
    "text feature": (
        "a,label\n" + "1,0\n" * 3 + "abc,1\n" + "1,0\n" * 8,
        "{path}: line 5, column 'a': 'abc' is not a number",
    ),
    "empty feature": (
        "a,b,label\n" + "1,2,0\n" * 3 + "1,,1\n" + "1,2,0\n" * 8,
        "{path}: line 5, column 'b': '' is empty",
    ),
    "too few rows": (
        "a,label\n1,0\n2,1\n",
        "{path}: 2 data rows; at least 10 are needed",
    ),
    "binary": (b"\xff\xfe\x00\x01" * 10, "{path}: not a text CSV file"),
}


@pytest.mark.parametrize("case", sorted(CSV_ERRORS))
def test_compare_malformed_csv(case, tmp_path, capsys):
    content, message = CSV_ERRORS[case]
    path = tmp_path / "data.csv"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    status, _, err = run_cli(
        capsys,
        "compare",
        "--data",
        path,
        "--target",
        "label",
        "--quick",
        "--logdir",
        tmp_path / "runs",
    )
    assert status == 2
    assert message.format(path=path) in err


def test_compare_malformed_npz(tmp_path, capsys):
    corrupt = _write(tmp_path / "corrupt.npz", "not a zip archive")
    status, _, err = run_cli(
        capsys,
        "compare",
        "--data",
        corrupt,
        "--target",
        "y",
        "--quick",
        "--logdir",
        tmp_path / "runs",
    )
    assert status == 2
    assert f"{corrupt}: not a valid .npz archive" in err
    assert "allow_pickle" not in err

    arrays = tmp_path / "arrays.npz"
    np.savez(arrays, x=np.zeros((20, 3)), labels=np.zeros(20))
    status, _, err = run_cli(
        capsys,
        "compare",
        "--data",
        arrays,
        "--target",
        "y",
        "--quick",
        "--logdir",
        tmp_path / "runs",
    )
    assert status == 2
    assert (
        f"{arrays}: no array 'y' for --target; the arrays are: labels, x" in err
    )


def test_compare_logdir_that_is_a_file(tmp_path, capsys):
    logdir = _write(tmp_path / "runs", "a file")
    status, _, err = run_cli(
        capsys, "compare", "--quick", "--placements", "none", "--logdir", logdir
    )
    assert status == 2
    assert f"--logdir {logdir}: exists and is not a directory" in err


def test_compare_argparse_errors(capsys):
    status, _, err = run_cli(capsys, "compare", "--model", "resnet")
    assert status == 2
    assert "invalid choice: 'resnet'" in err
    status, _, err = run_cli(capsys, "compare", "--epochs", "many")
    assert status == 2
    assert "invalid int value: 'many'" in err
