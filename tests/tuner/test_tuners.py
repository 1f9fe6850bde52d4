"""Every keras-tuner tuner runs the bn-keras hypermodels on tiny data."""

import os
import re

import keras
import keras_tuner
import numpy as np
import pytest

import bn_keras
from bn_keras.callbacks._tags import batchnorm_tags
from bn_keras.tuner import BNPlacementHyperModel
from bn_keras.tuner import BNSearchMLP
from bn_keras.tuner import placement_report
from bn_keras.tuner._trial_runs import trial_hparams
from tests.tuner.helpers import hparams_experiments
from tests.tuner.helpers import hparams_sessions
from tests.tuner.helpers import in_tensorboard
from tests.tuner.helpers import scalar_tags
from tests.tuner.helpers import tiny_data
from tests.tuner.helpers import user_model

FIT = dict(validation_split=0.25, batch_size=16, verbose=0)


def statuses(tuner):
    return {t.trial_id: t.status for t in tuner.oracle.trials.values()}


def built_from(tuner, trial):
    """The model of a trial, rebuilt from its hyperparameters."""
    return tuner.hypermodel.build(trial.hyperparameters.copy())


def bn_names(model):
    return [layer.name for layer in bn_keras.find_batchnorm(model)]


def test_random_search_and_report(tmp_path, capsys):
    hypermodel = BNPlacementHyperModel(
        user_model(), normalizations=["batch", "ghost"], virtual_batch_size=8
    )
    tuner = keras_tuner.RandomSearch(
        hypermodel,
        objective="val_loss",
        max_trials=2,
        seed=3,
        directory=tmp_path,
    )
    tuner.search(*tiny_data(shift=1.0), epochs=1, **FIT)
    assert list(statuses(tuner).values()) == ["COMPLETED"] * 2
    capsys.readouterr()
    rows = placement_report(tuner)
    printed = capsys.readouterr().out
    trials = tuner.oracle.trials
    assert sorted(row["trial_id"] for row in rows) == sorted(trials)
    scores = [row["score"] for row in rows]
    assert scores == sorted(scores)  # val_loss: lowest first
    assert [row["rank"] for row in rows] == [1, 2]
    for row in rows:
        values = trials[row["trial_id"]].hyperparameters.values
        assert row["score"] == pytest.approx(trials[row["trial_id"]].score)
        for slot, info in row["slots"].items():
            assert info == {
                key: value
                for key, value in (
                    (name.split("/", 1)[1], v)
                    for name, v in values.items()
                    if name.startswith(f"{slot}/")
                )
            }
        assert row["hyperparameters"] == {
            "input_batchnorm": values["input_batchnorm"]
        }
        assert set(row["slots"]) == {"hidden_1", "hidden_2", "out"}
    assert "Batch normalization placements" in printed
    for name in ["hidden_1", "hidden_2", "out", "val_loss"]:
        assert name in printed
    for row in rows:
        # The run column: the trial's run name on one line, whole or cut
        # short after the trial id.
        (cell,) = [
            line.split("│")[2].strip()
            for line in printed.splitlines()
            if line.startswith(f"│ {row['rank']} │")
        ]
        name = row["run_name"]
        assert cell == name or name.startswith(cell.rstrip("…"))
        assert cell.startswith(f"trial_{row['trial_id']}-")
    # The best model keras-tuner reloads is the one the hyperparameters say.
    best = tuner.get_best_models(1)[0]
    best_trial = trials[rows[0]["trial_id"]]
    assert bn_names(best) == bn_names(built_from(tuner, best_trial))


def test_grid_search_goes_over_every_placement(tmp_path):
    hypermodel = BNPlacementHyperModel(
        user_model(),
        placements=["layer-bn-act", "layer-act-bn", "layer-act"],
        normalizations="batch",
        momentum=0.9,
        per_layer=False,
        input_batchnorm=False,
    )
    tuner = keras_tuner.GridSearch(
        hypermodel, objective="val_loss", directory=tmp_path
    )
    tuner.search(*tiny_data(), epochs=1, **FIT)
    trials = tuner.oracle.trials.values()
    assert [t.status for t in trials] == ["COMPLETED"] * 3
    assert sorted(
        t.hyperparameters.values["batchnorm/placement"] for t in trials
    ) == ["layer-act", "layer-act-bn", "layer-bn-act"]


@pytest.mark.slow
def test_bayesian_optimization(tmp_path):
    pytest.importorskip("scipy")
    hypermodel = BNSearchMLP(
        3,
        input_shape=(8,),
        num_layers=[1, 2],
        units=8,
        normalizations=["batch", "renorm"],
    )
    tuner = keras_tuner.BayesianOptimization(
        hypermodel,
        objective="val_loss",
        max_trials=3,
        num_initial_points=2,  # the third trial comes from the GP
        seed=1,
        directory=tmp_path,
    )
    tuner.search(*tiny_data(), epochs=1, **FIT)
    assert list(statuses(tuner).values()) == ["COMPLETED"] * 3
    assert len(placement_report(tuner, print_table=False)) == 3


class _RecordingHyperModel(BNPlacementHyperModel):
    """Records the BN state of each model Hyperband resumes, before it
    trains further."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.resumed = {}

    def fit(self, hp, model, *args, **kwargs):
        parent = hp.values.get("tuner/trial_id")
        if parent is not None:
            self.resumed[parent] = [
                [np.array(v) for v in layer.non_trainable_weights]
                for layer in bn_keras.find_batchnorm(model)
            ]
        return super().fit(hp, model, *args, **kwargs)


@pytest.mark.slow
def test_hyperband_reloads_the_bn_statistics(tmp_path):
    hypermodel = _RecordingHyperModel(
        user_model(),
        placements=["layer-bn-act", "layer-act-bn"],
        normalizations=["batch", "renorm"],
        input_batchnorm=True,
    )
    tuner = keras_tuner.Hyperband(
        hypermodel,
        objective="val_loss",
        max_epochs=2,
        factor=2,
        hyperband_iterations=1,
        # Not 0: keras-tuner reads seed=0 as "no seed" and draws one from
        # Python's global random state, which building any layer moves.
        # Seed 2 draws a parent trial whose BN layers follow activations;
        # a BN right after the first Dense, whose inputs are standardized,
        # keeps a moving mean near 0 by design and cannot show the check
        # below whether trained statistics were reloaded.
        seed=2,
        directory=tmp_path,
    )
    tuner.search(*tiny_data(shift=3.0), **FIT)
    assert set(statuses(tuner).values()) == {"COMPLETED"}
    assert hypermodel.resumed, "Hyperband resumed no trial"
    for parent_id, resumed in hypermodel.resumed.items():
        parent = tuner.load_model(tuner.oracle.get_trial(parent_id))
        saved = [
            [np.array(v) for v in layer.non_trainable_weights]
            for layer in bn_keras.find_batchnorm(parent)
        ]
        assert len(saved) == len(resumed) >= 2
        for saved_layer, resumed_layer in zip(saved, resumed):
            for a, b in zip(saved_layer, resumed_layer):
                np.testing.assert_array_equal(a, b)
        # The statistics moved away from their initial values (mean 0):
        # what was reloaded is the trained state, not a fresh one.
        moving_means = [layer[0] for layer in resumed]
        assert all(np.abs(m).max() > 0.05 for m in moving_means)


def test_nonfinite_statistics_fail_the_trial_and_the_search_goes_on(
    tmp_path, capsys
):
    x, y = tiny_data()
    x[5, 3] = np.nan
    hypermodel = BNPlacementHyperModel(
        user_model(), placements="layer-bn-act", input_batchnorm=False
    )
    tuner = keras_tuner.RandomSearch(
        hypermodel, objective="val_loss", max_trials=2, directory=tmp_path
    )
    tuner.search(x, y, epochs=3, **FIT)
    trials = list(tuner.oracle.trials.values())
    assert [t.status for t in trials] == ["FAILED", "FAILED"]
    for trial in trials:
        assert "FailedTrialError" in trial.message
        assert re.search(
            r"non-finite weights=\['hidden_1_bn/gamma', ", trial.message
        )
        # Stopped after the first epoch instead of training on.
        assert "after 1 epoch(s)" in trial.message
    capsys.readouterr()
    assert placement_report(tuner) == []
    assert "0 completed trial(s), best first; 2 failed" in (
        capsys.readouterr().out.replace("\n", " ")
    )


def test_one_diverging_trial_fails_and_the_others_complete(tmp_path):
    hypermodel = BNSearchMLP(
        3,
        input_shape=(8,),
        num_layers=1,
        units=8,
        learning_rate=[1e-3, 1e38],  # the second one diverges
        placements="layer-bn-act",
        normalizations="batch",
        momentum=0.9,
        input_batchnorm=False,
    )
    tuner = keras_tuner.GridSearch(
        hypermodel, objective="val_loss", directory=tmp_path
    )
    tuner.search(*tiny_data(), epochs=2, **FIT)
    by_rate = {
        t.hyperparameters.values["learning_rate"]: t.status
        for t in tuner.oracle.trials.values()
    }
    assert by_rate == {1e-3: "COMPLETED", 1e38: "FAILED"}
    rows = placement_report(tuner, print_table=False)
    assert [row["hyperparameters"]["learning_rate"] for row in rows] == [1e-3]


def _check_trial_folder(tuner, trial, run_dir, group_name):
    """Keras's `train` run below the monitor's, and the trial's HParams
    once, in the monitor's run."""
    assert os.path.isdir(os.path.join(run_dir, "train"))
    hp = trial.hyperparameters
    assert hparams_sessions(run_dir) == [
        (group_name, in_tensorboard(trial_hparams(hp.space, hp.values)))
    ]
    tags = scalar_tags(run_dir)
    layers = {
        tag.split("/")[0] for tag in tags if tag.endswith("/moving_mean/drift")
    }
    # The monitor's tags of the trial's BN layers: the same on the model
    # rebuilt from the trial's hyperparameters (another Keras numbering).
    rebuilt = built_from(tuner, trial)
    assert layers == {tag for _, tag in batchnorm_tags(rebuilt)}
    assert len(layers) == len(bn_names(rebuilt))


def folders(directory):
    return sorted(
        name
        for name in os.listdir(directory)
        if os.path.isdir(os.path.join(directory, name))
    )


@pytest.mark.tensorflow_only
def test_tensorboard_and_monitor_land_in_each_trial_run(tmp_path):
    log_dir = tmp_path / "logs"
    hypermodel = BNPlacementHyperModel(
        user_model(),
        placements="layer-bn-act",
        normalizations="batch",
        momentum=0.9,
        per_layer=False,
    )
    # The second trial adds an input BN: the folders must not mix.
    tuner = keras_tuner.GridSearch(
        hypermodel, objective="val_loss", directory=tmp_path / "search"
    )
    tuner.search(
        *tiny_data(),
        epochs=2,
        callbacks=[
            keras.callbacks.TensorBoard(str(log_dir)),
            bn_keras.callbacks.BatchNormMonitor(str(log_dir), histograms=False),
        ],
        **FIT,
    )
    trials = tuner.oracle.trials
    # keras-tuner pads the ids to the digits of max_trials (None: 4).
    names = {
        "0000": "trial_0000-layer-bn-act.batch",
        "0001": "trial_0001-input-bn_layer-bn-act.batch",
    }
    assert sorted(trials) == sorted(names)
    # Nothing else: keras-tuner's own `<trial_id>/execution0` folders, made
    # for its HParams callback, are gone.
    assert folders(log_dir) == sorted(names.values())
    for trial_id, trial in trials.items():
        assert trial.hyperparameters.values["input_batchnorm"] == (
            trial_id == "0001"
        )
        run_dir = log_dir / names[trial_id]
        assert folders(run_dir) == ["train", "validation"]
        _check_trial_folder(tuner, trial, run_dir, f"trial_{trial_id}")
        # The experiment config in every run, the same: the one
        # hyperparameter that varies (the space fixes the slot's
        # placement, normalization and momentum).
        (experiment,) = hparams_experiments(run_dir)
        assert experiment["hparams"] == ["01.input_batchnorm"]
        assert experiment["domains"]["01.input_batchnorm"] == [False, True]
        assert experiment["metrics"] == [
            ("", "epoch/best_val_loss"),  # the objective: best, then final
            ("validation", "epoch_loss"),
            ("", "alerts/unhealthy_layers"),
            ("", "batchnorm/max_drift_in_std"),  # no probe_data
            ("validation", "epoch_accuracy"),
            ("", "batchnorm/min_moving_variance"),
            ("", "batchnorm/nonfinite_layers"),
            ("train", "epoch_accuracy"),
            ("train", "epoch_loss"),
        ]
    assert {len(bn_names(built_from(tuner, t))) for t in trials.values()} == {
        2,
        3,
    }
    # No run holds the config alone.
    assert not hparams_experiments(log_dir)
    rows = placement_report(tuner, print_table=False)
    assert sorted(row["run_name"] for row in rows) == sorted(names.values())


class MyTensorBoard(keras.callbacks.TensorBoard):
    """A subclass, which keras-tuner alone would not redirect."""


@pytest.mark.tensorflow_only
def test_a_tensorboard_subclass_lands_there_too_per_execution(tmp_path):
    log_dir = tmp_path / "logs"
    hypermodel = BNPlacementHyperModel(
        user_model(),
        placements="layer-act-bn",
        normalizations="ghost",
        virtual_batch_size=8,
        input_batchnorm=False,
    )
    tuner = keras_tuner.RandomSearch(
        hypermodel,
        objective="val_loss",
        max_trials=1,
        executions_per_trial=2,
        directory=tmp_path / "search",
    )
    tuner.search(
        *tiny_data(),
        epochs=1,
        callbacks=[
            MyTensorBoard(str(log_dir)),
            bn_keras.callbacks.BatchNormMonitor(str(log_dir), histograms=False),
        ],
        **FIT,
    )
    ((trial_id, trial),) = tuner.oracle.trials.items()
    # No slot of its own for the output layer: BN only after a layer.
    name = f"trial_{trial_id}-layer-act-bn.ghost-x2"
    assert folders(log_dir) == [name, f"{name}-execution1"]
    for run in folders(log_dir):
        # Both executions: one session group, averaged by TensorBoard.
        _check_trial_folder(tuner, trial, log_dir / run, f"trial_{trial_id}")
        (experiment,) = hparams_experiments(log_dir / run)
        assert experiment["metrics"][:3] == [
            ("", "epoch/best_val_loss"),
            ("validation", "epoch_loss"),
            ("", "alerts/unhealthy_layers"),
        ]


@pytest.mark.parametrize(
    "name,expected",
    [
        ("random", keras_tuner.RandomSearch),
        ("grid", bn_keras.tuner.ResumableGridSearch),
        ("hyperband", keras_tuner.Hyperband),
        ("bayesian", keras_tuner.BayesianOptimization),
    ],
)
def test_get_tuner(name, expected):
    assert bn_keras.tuner.get_tuner(name) is expected


def test_get_tuner_refuses_an_unknown_name():
    with pytest.raises(ValueError, match=r"Received: name='annealing'"):
        bn_keras.tuner.get_tuner("annealing")
