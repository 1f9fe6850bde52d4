"""`keras_tuner.GridSearch` that can be interrupted and resumed."""

import functools
import json
import os
import tempfile

import keras_tuner


def _save_json_atomically(path, state):
    """Writes `state` as JSON to `path` through a temporary file and a
    rename: a process killed mid-write leaves the previous file whole."""
    fd, temporary = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(state))
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


class _ResumableGridSearchOracle(keras_tuner.oracles.GridSearchOracle):
    """Rebuilds the grid bookkeeping that keras-tuner 1.4.8 does not save.

    `GridSearchOracle` keeps the trials sorted by their values and a queue
    of the trials whose next combination is still to be proposed, but its
    state file has neither (keras-team/keras-tuner#1055): a search reloaded
    with `overwrite=False` crashes with a `KeyError` as soon as the first
    trial after the reload ends. Both are rebuilt here from the trials.

    It also writes its state and each trial's whole or not at all:
    keras-tuner truncates `oracle.json` and `trial.json` before writing
    them, so a process killed at that moment (a `kill -9`, a preempted
    machine) leaves a file that no search can reload.
    """

    def save(self):
        path = self._get_oracle_fname()
        if "://" in path:  # a remote folder (gs://...): keras-tuner's writer
            return super().save()
        _save_json_atomically(path, self.get_state())

    def _save_trial(self, trial):
        directory = self._get_trial_dir(trial.trial_id)
        if "://" in directory:
            return super()._save_trial(trial)
        _save_json_atomically(
            os.path.join(directory, "trial.json"), trial.get_state()
        )

    def set_state(self, state):
        super().set_state(state)
        ids = [i for i in dict.fromkeys(self.start_order) if i in self.trials]
        ids.sort(
            key=functools.cmp_to_key(
                lambda a, b: self._compare(
                    self.trials[a].hyperparameters.values,
                    self.trials[b].hyperparameters.values,
                )
            )
        )
        self._ordered_ids = type(self._ordered_ids)()
        for trial_id in ids:
            self._ordered_ids.insert(trial_id)
        # Every ended trial may still have a next combination to propose;
        # those already tried are skipped by `populate_space`.
        self._populate_next = [i for i in self.end_order if i in self.trials]


class ResumableGridSearch(keras_tuner.GridSearch):
    """`keras_tuner.GridSearch` that resumes where it was interrupted.

    The same tuner, with the same arguments, except that a search created
    again with `overwrite=False` after an interruption (a killed process, a
    restarted notebook) goes on with the combinations not tried yet. With
    keras-tuner 1.4.8, `keras_tuner.GridSearch` reloads the completed trials
    and then fails with a `KeyError` when the first trial after the reload
    ends (keras-team/keras-tuner#1055): its oracle does not save the order
    of the grid. This one rebuilds it from the trials. A trial that was
    running when the search stopped is run again, under its id. Its state
    and trial files are written whole or not at all (through a temporary
    file and a rename), so a process killed while saving leaves files a
    search can reload.

    Args:
        hypermodel: A `HyperModel`, such as
            `bn_keras.tuner.BNPlacementHyperModel`, or a function `hp ->
            model`.
        objective: The objective, as for `keras_tuner.GridSearch`.
        max_trials: Optional maximum number of trials; by default the grid
            is exhausted.
        seed: Optional random seed.
        hyperparameters: Optional `keras_tuner.HyperParameters` to register
            or override hyperparameters in advance.
        tune_new_entries: Whether hyperparameters requested by the
            hypermodel but not in `hyperparameters` are searched. Defaults
            to `True`.
        allow_new_entries: Whether the hypermodel may request
            hyperparameters not in `hyperparameters`. Defaults to `True`.
        max_retries_per_trial: Retries of a crashed trial. Defaults to `0`.
        max_consecutive_failed_trials: The search stops after this many
            failed trials in a row. Defaults to `3`.
        **kwargs: Arguments of `keras_tuner.Tuner` (`directory`,
            `project_name`, `overwrite`, `distribution_strategy`, ...).

    Example:

    ```python
    tuner = bn_keras.tuner.ResumableGridSearch(
        bn_keras.tuner.BNPlacementHyperModel(model, per_layer=False),
        objective="val_loss",
        directory="search",
        overwrite=False,  # picks up where an interrupted run stopped
    )
    tuner.search(x, y, validation_split=0.2, epochs=5)
    ```
    """

    def __init__(
        self,
        hypermodel=None,
        objective=None,
        max_trials=None,
        seed=None,
        hyperparameters=None,
        tune_new_entries=True,
        allow_new_entries=True,
        max_retries_per_trial=0,
        max_consecutive_failed_trials=3,
        **kwargs,
    ):
        self.seed = seed
        oracle = _ResumableGridSearchOracle(
            objective=objective,
            max_trials=max_trials,
            seed=seed,
            hyperparameters=hyperparameters,
            tune_new_entries=tune_new_entries,
            allow_new_entries=allow_new_entries,
            max_retries_per_trial=max_retries_per_trial,
            max_consecutive_failed_trials=max_consecutive_failed_trials,
        )
        keras_tuner.Tuner.__init__(self, oracle, hypermodel, **kwargs)
