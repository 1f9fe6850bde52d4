"""A search created again with `overwrite=False` goes on where it stopped.

The search that is really killed mid-trial is in `test_processes.py`.
"""

import json
import os

import keras_tuner
import pytest

from bn_keras.tuner import BNPlacementHyperModel
from bn_keras.tuner import ResumableGridSearch
from tests.tuner.helpers import tiny_data
from tests.tuner.helpers import user_model

FIT = dict(validation_split=0.25, batch_size=16, epochs=1, verbose=0)


def hypermodel():
    return BNPlacementHyperModel(
        user_model(),
        placements=["layer-bn-act", "layer-act-bn", "layer-act"],
        normalizations="batch",
        momentum=0.9,
        per_layer=False,
        input_batchnorm=False,
    )


def summary(tuner):
    return {
        trial_id: (t.status, t.score, t.hyperparameters.values)
        for trial_id, t in tuner.oracle.trials.items()
    }


def placements(tuner):
    return sorted(
        t.hyperparameters.values["batchnorm/placement"]
        for t in tuner.oracle.trials.values()
    )


def test_random_search_resumes(tmp_path, capsys):
    first = keras_tuner.RandomSearch(
        hypermodel(), objective="val_loss", max_trials=2, seed=0,
        directory=tmp_path,
    )
    first.search(*tiny_data(), **FIT)
    before = summary(first)
    assert [s for s, _, _ in before.values()] == ["COMPLETED"] * 2
    capsys.readouterr()
    second = keras_tuner.RandomSearch(
        hypermodel(), objective="val_loss", max_trials=3, seed=0,
        directory=tmp_path, overwrite=False,
    )
    assert "Reloading Tuner" in capsys.readouterr().out
    second.search(*tiny_data(), **FIT)
    after = summary(second)
    assert {k: after[k] for k in before} == before
    assert len(after) == 3
    assert placements(second) == ["layer-act", "layer-act-bn", "layer-bn-act"]


def test_keras_tuner_grid_search_does_not_resume(tmp_path):
    """keras-team/keras-tuner#1055 in keras-tuner 1.4.8, the reason for
    `ResumableGridSearch`: the resumed grid stops at once (or, after a
    trial that was running, fails with a `KeyError`). If this test fails,
    keras-tuner has fixed it."""
    first = keras_tuner.GridSearch(
        hypermodel(), objective="val_loss", max_trials=1, directory=tmp_path
    )
    first.search(*tiny_data(), **FIT)
    second = keras_tuner.GridSearch(
        hypermodel(), objective="val_loss", directory=tmp_path,
        overwrite=False,
    )
    second.search(*tiny_data(), **FIT)
    assert placements(second) == ["layer-bn-act"]  # 2 never tried


def test_resumable_grid_search_finishes_the_grid(tmp_path):
    first = ResumableGridSearch(
        hypermodel(), objective="val_loss", max_trials=1, directory=tmp_path
    )
    first.search(*tiny_data(), **FIT)
    before = summary(first)
    second = ResumableGridSearch(
        hypermodel(), objective="val_loss", directory=tmp_path,
        overwrite=False,
    )
    assert isinstance(second, keras_tuner.GridSearch)
    second.search(*tiny_data(), **FIT)
    after = summary(second)
    assert {k: after[k] for k in before} == before
    assert [s for s, _, _ in after.values()] == ["COMPLETED"] * 3
    assert placements(second) == ["layer-act", "layer-act-bn", "layer-bn-act"]


def test_a_search_killed_while_saving_reloads_every_trial(
    tmp_path, monkeypatch
):
    """keras-tuner truncates `oracle.json` and `trial.json` before writing
    them; ours are replaced whole, so a kill mid-save loses nothing."""
    first = ResumableGridSearch(
        hypermodel(), objective="val_loss", max_trials=1, directory=tmp_path
    )
    first.search(*tiny_data(), **FIT)
    before = summary(first)

    def killed(fd):
        raise KeyboardInterrupt  # the new contents written, not yet in place

    monkeypatch.setattr(os, "fsync", killed)
    second = ResumableGridSearch(
        hypermodel(), objective="val_loss", directory=tmp_path,
        overwrite=False,
    )
    with pytest.raises(KeyboardInterrupt):
        second.search(*tiny_data(), **FIT)
    monkeypatch.undo()
    project = tmp_path / "untitled_project"
    for path in project.rglob("*.json"):
        json.loads(path.read_text())  # every file whole
    assert not list(project.rglob("*.tmp"))
    third = ResumableGridSearch(
        hypermodel(), objective="val_loss", directory=tmp_path,
        overwrite=False,
    )
    third.search(*tiny_data(), **FIT)
    after = summary(third)
    assert {k: after[k] for k in before} == before
    assert [s for s, _, _ in after.values()] == ["COMPLETED"] * 3


@pytest.mark.tensorflow_only
def test_a_search_in_a_remote_folder_saves_there():
    """Remote folders (`gs://...`; here TensorFlow's in-memory `ram://`)
    have no temporary files and renames: keras-tuner's own writer saves
    there. (Not reloaded here: `ram://` appends where it should
    overwrite, so keras-tuner's own files do not reload from it.)"""
    import tensorflow as tf

    directory = f"ram://search-{os.getpid()}"
    tuner = ResumableGridSearch(
        hypermodel(), objective="val_loss", max_trials=2, directory=directory
    )
    tuner.search(*tiny_data(), **FIT)
    assert [s for s, _, _ in summary(tuner).values()] == ["COMPLETED"] * 2
    project = f"{directory}/untitled_project"
    assert "oracle.json" in tf.io.gfile.listdir(project)
    for trial_id in tuner.oracle.trials:
        assert tf.io.gfile.exists(f"{project}/trial_{trial_id}/trial.json")
