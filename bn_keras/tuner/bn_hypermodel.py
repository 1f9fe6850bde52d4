"""A keras-tuner HyperModel that guards and logs batch normalization."""

from __future__ import annotations

import collections
import os
from typing import Any

import keras
import keras_tuner
import numpy as np

from bn_keras._statistics import nonfinite
from bn_keras._statistics import read_statistics
from bn_keras.callbacks._hparams import experiment_metrics
from bn_keras.callbacks._hparams import write_experiment
from bn_keras.callbacks._hparams import write_session
from bn_keras.callbacks._nonfinite_guard import NonFiniteGuard
from bn_keras.callbacks.batch_norm_monitor import BatchNormMonitor
from bn_keras.models.find_batchnorm import find_batchnorm
from bn_keras.tuner._trial_runs import close_writer
from bn_keras.tuner._trial_runs import execution_of
from bn_keras.tuner._trial_runs import is_keras_tuner_hparams
from bn_keras.tuner._trial_runs import log_root
from bn_keras.tuner._trial_runs import redirected_by_keras_tuner
from bn_keras.tuner._trial_runs import remove_unused_run
from bn_keras.tuner._trial_runs import run_name
from bn_keras.tuner._trial_runs import search_hparams


def nonfinite_batchnorm_weights(model):
    """Paths of the batch normalization weights of `model` that hold a NaN
    or an infinity (moving statistics, `gamma`, `beta`, renorm statistics),
    in forward order, such as `"block_0/batch_normalization/gamma"`."""
    prefix = f"{model.name}/"
    bad = []
    for layer in find_batchnorm(model):
        names = nonfinite(read_statistics(layer))
        for variable in layer.weights:  # in the layer's order
            if variable.name not in names:
                continue
            path = getattr(variable, "path", None) or (
                f"{layer.name}/{variable.name}"
            )
            bad.append(path.removeprefix(prefix))
    return bad


class _HParamsWriter(keras.callbacks.Callback):
    """Writes a trial's HParams session to `run_dir` when training starts.

    Sessions with the same `group_name` (the executions of one trial) are
    one row of the HParams dashboard.

    The summary `tensorboard.plugins.hparams.api.KerasCallback` writes,
    written as `BatchNormMonitor` writes its own: through `tf.summary` on
    TensorFlow, without TensorFlow on the other backends.
    """

    def __init__(self, run_dir, hparams, group_name):
        super().__init__()
        self.run_dir = run_dir
        self.hparams = hparams
        self.group_name = group_name

    def on_train_begin(self, logs=None):
        write_session(self.run_dir, self.hparams, self.group_name)


def _hparams(hp):
    """The trial's active values, as the HParams plugin accepts them."""
    values = {}
    for name, value in hp.values.items():
        if isinstance(value, (bool, int, float, str)):
            values[name] = value
        elif isinstance(value, np.generic):
            values[name] = value.item()
        else:
            values[name] = str(value)
    return values


def _tuner_callback(callbacks):
    """keras-tuner's own callback among a trial's callbacks, or `None`.

    keras-tuner passes `HyperModel.fit` the trial and the tuner only
    through the callback that forwards the epoch events to the tuner (it
    has `tuner` and `trial` attributes); `None` when `fit` runs outside a
    search.
    """
    for callback in callbacks:
        trial = getattr(callback, "trial", None)
        if trial is not None and hasattr(callback, "tuner"):
            if getattr(trial, "trial_id", None) is not None:
                return callback
    return None


def _objective_names(objective):
    """The Keras log names of a keras-tuner objective (or several)."""
    objectives = getattr(objective, "objectives", None) or [objective]
    names = [getattr(o, "name", None) for o in objectives]
    return [n for n in names if n and n != "default_objective"]


class BNHyperModel(keras_tuner.HyperModel):
    """A `keras_tuner.HyperModel` whose trials fail cleanly on non-finite BN.

    The base class of the bn-keras hypermodels, for your own too: subclass
    it and write `build(hp)` (with `bn_keras.tuner.bn_hyperparameters` and
    `bn_keras.layers.BNBlock`). Its `fit` trains as
    `keras_tuner.HyperModel.fit` does, and adds two things:

    **Non-finite statistics.** After every epoch it checks the weights of
    every batch normalization layer (`bn_keras.find_batchnorm`: moving
    statistics, `gamma`, `beta`, renorm statistics) and stops training when
    one holds a NaN or an infinity; `fit` then raises
    `keras_tuner.errors.FailedTrialError` naming the weights, so keras-tuner
    records the trial as `FAILED` (with the message) and the search goes
    on. (keras-tuner stops a search after `max_consecutive_failed_trials`
    failures in a row, 3 by default.)

    **One TensorBoard run per trial, named by what it tried.** In a
    search, every `keras.callbacks.TensorBoard` (and subclass) and every
    `bn_keras.callbacks.BatchNormMonitor` passed to `search` writes to
    `<log_dir>/<run name>`, such as `logs/trial_03-layer-bn-act.batch`:
    the trial id, then each slot's placement and normalization (see
    `bn_keras.tuner.placement_report`, which shows the same names), and
    `-execution<N>` for the executions after the first. Keras's `train` and
    `validation` runs and the monitor's `batchnorm` run land side by side
    in it, on every backend (keras-tuner alone moves only a callback named
    exactly `TensorBoard`, on TensorFlow, to `<log_dir>/<trial_id>/
    execution<N>`; this `fit` moves that one too, and removes the folder
    keras-tuner opened for it). Each run folder gets the trial's HParams
    session, and `<log_dir>` the HParams experiment config once per
    process: the search space with its domains (placements, then
    normalizations, then the rest) and the metrics, the tuner's objective
    first, then the validation loss and the monitor's model-wide figures.
    Give the monitor and the TensorBoard callback the same `log_dir`.

    Args:
        name: Optional name of the hypermodel.
        tunable: Whether the hyperparameters it declares are searched.
            Defaults to `True`.

    Example:

    ```python
    class MyHyperModel(bn_keras.tuner.BNHyperModel):
        def build(self, hp):
            model = keras.Sequential([keras.Input((16,))])
            for i in range(2):
                bn = bn_keras.tuner.bn_hyperparameters(hp, f"block_{i}")
                model.add(bn_keras.layers.BNBlock(
                    keras.layers.Dense(32), activation="relu", **bn))
            model.add(keras.layers.Dense(1))
            model.compile("adam", "mse")
            return model

    tuner = keras_tuner.RandomSearch(
        MyHyperModel(), objective="val_loss", max_trials=10)
    tuner.search(x, y, validation_split=0.2, epochs=5, callbacks=[
        keras.callbacks.TensorBoard("logs"),
        bn_keras.callbacks.BatchNormMonitor("logs"),
    ])
    ```
    """

    def __init__(
        self, *, name: str | None = None, tunable: bool = True
    ) -> None:
        super().__init__(name=name, tunable=tunable)
        self._executions = collections.Counter()
        self._experiments = set()  # the log folders with a config

    def fit(
        self,
        hp: keras_tuner.HyperParameters,
        model: keras.Model,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        """Trains `model` with `model.fit(*args, **kwargs)`.

        Args:
            hp: The trial's `keras_tuner.HyperParameters`.
            model: The model `build(hp)` returned.
            *args: Positional arguments of `model.fit`, from `search`.
            **kwargs: Keyword arguments of `model.fit`, from `search`.

        Returns:
            The `History` of `model.fit`.

        Raises:
            keras_tuner.errors.FailedTrialError: if a batch normalization
                weight is not finite after training.
        """
        callbacks = list(kwargs.pop("callbacks", None) or [])
        search = _tuner_callback(callbacks)
        if search is not None:
            callbacks = self._trial_callbacks(
                callbacks, search.tuner, search.trial, hp
            )
        guard = NonFiniteGuard()
        history = model.fit(*args, callbacks=[guard, *callbacks], **kwargs)
        bad = nonfinite_batchnorm_weights(model)
        if bad:
            raise keras_tuner.errors.FailedTrialError(
                "Batch normalization weights became non-finite (NaN or "
                f"infinity) after {len(history.epoch)} epoch(s) of training; "
                "look for NaN or Inf in the data, or a diverging loss (a "
                f"learning rate too high). Received: non-finite weights={bad}"
            )
        return history

    def _execution(self, callbacks, trial_id):
        """Which execution of the trial this is: keras-tuner's, read from
        the folder it gave a `TensorBoard`, else counted here."""
        execution = None
        for callback in callbacks:
            if isinstance(
                callback, keras.callbacks.TensorBoard
            ) and redirected_by_keras_tuner(callback):
                found = execution_of(callback.log_dir, trial_id)
                if found is not None:
                    execution = found
        if execution is None:
            execution = self._executions[trial_id]
        self._executions[trial_id] = execution + 1
        return execution

    def _trial_callbacks(self, callbacks, tuner, trial, hp):
        """The callbacks with TensorBoard-like ones moved to the trial's
        run, and an HParams writer per run."""
        trial_id = str(trial.trial_id)
        name = run_name(
            trial_id, hp.values, self._execution(callbacks, trial_id)
        )
        # The trial's executions are one session group, under the name of
        # the first one's run.
        group_name = run_name(trial_id, hp.values)
        result, roots, unused = [], {}, []
        for callback in callbacks:
            if is_keras_tuner_hparams(callback):
                close_writer(callback)  # its folder is removed below
                continue
            root = log_root(callback, trial_id)
            if root is None:
                result.append(callback)
                continue
            run_dir = os.path.join(root, name)
            if isinstance(callback, BatchNormMonitor):
                callback = callback.with_log_dir(run_dir)
            else:
                if os.path.normpath(str(callback.log_dir)) != (
                    os.path.normpath(root)
                ):
                    unused.append(str(callback.log_dir))
                callback.log_dir = run_dir
            roots.setdefault(run_dir, root)
            result.append(callback)
        for log_dir in unused:
            remove_unused_run(log_dir)
        values = _hparams(hp)
        for run_dir, root in roots.items():
            result.append(_HParamsWriter(run_dir, values, group_name))
            self._write_experiment(root, hp, tuner.oracle.objective, result)
        return result

    def _write_experiment(self, root, hp, objective, callbacks):
        """The HParams experiment config in `root`, once per process."""
        key = os.path.normpath(root)
        if key in self._experiments:
            return
        self._experiments.add(key)
        monitors = [c for c in callbacks if isinstance(c, BatchNormMonitor)]
        metrics = experiment_metrics(
            _objective_names(objective),
            keras_logs=any(
                isinstance(c, keras.callbacks.TensorBoard) for c in callbacks
            ),
            monitor=bool(monitors),
            probe=any(m.probe_data is not None for m in monitors),
        )
        write_experiment(root, search_hparams(hp.space), metrics)
