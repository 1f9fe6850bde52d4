"""A keras-tuner HyperModel that guards and logs batch normalization."""

from __future__ import annotations

import collections
import os
from typing import Any

import keras
import keras_tuner

from bn_keras._statistics import nonfinite
from bn_keras._statistics import read_statistics
from bn_keras.callbacks._hparams import epoch_metric
from bn_keras.callbacks._hparams import write_run
from bn_keras.callbacks._nonfinite_guard import NonFiniteGuard
from bn_keras.callbacks.batch_norm_monitor import BatchNormMonitor
from bn_keras.models.find_batchnorm import find_batchnorm
from bn_keras.tuner._trial_runs import close_writer
from bn_keras.tuner._trial_runs import execution_of
from bn_keras.tuner._trial_runs import group_name
from bn_keras.tuner._trial_runs import is_keras_tuner_hparams
from bn_keras.tuner._trial_runs import log_root
from bn_keras.tuner._trial_runs import redirected_by_keras_tuner
from bn_keras.tuner._trial_runs import remove_unused_run
from bn_keras.tuner._trial_runs import run_name
from bn_keras.tuner._trial_runs import trial_hparams


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
    """Writes a trial's HParams session, and the experiment config, to
    `run_dir` when training starts: for a run that no `BatchNormMonitor`
    writes (one holding Keras's `TensorBoard` subfolders only).

    Sessions with the same `group_name` (the executions of one trial) are
    one row of the HParams dashboard. Written as `BatchNormMonitor`
    writes its own: through `tf.summary` on TensorFlow, without TensorFlow
    on the other backends.
    """

    def __init__(self, run_dir, hparams, group_name, metrics):
        super().__init__()
        self.run_dir = run_dir
        self.hparams = hparams
        self.group_name = group_name
        self.metrics = metrics

    def on_train_begin(self, logs=None):
        write_run(self.run_dir, self.hparams, self.group_name, self.metrics)


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
    `-execution<N>` for the executions after the first. The monitor writes
    in that folder itself, Keras's `train` and `validation` runs in its
    subfolders, on every backend (keras-tuner alone moves only a callback
    named exactly `TensorBoard`, on TensorFlow, to `<log_dir>/<trial_id>/
    execution<N>`; this `fit` moves that one too, and removes the folder
    keras-tuner opened for it). Each run gets the trial's HParams session
    and the experiment config (the same in every run, so that no run holds
    it alone): one column per hyperparameter that can vary (the input
    normalization, then one per slot with its placement, normalization and
    the settings that vary, such as `layer-bn-act.ghost vbs=16 m=0.9`, then
    the others), `"none"` where a trial lacks one; the hyperparameters the
    space fixes are left out. The metrics: the tuner's objective first (its
    best value, as keras-tuner scores a trial, then its final value), then
    the validation loss and the monitor's model-wide figures. A trial's
    row is named `trial_<id>`; its run's name and its text summary say
    what it tried.
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
        run, each run with the trial's HParams session."""
        trial_id = str(trial.trial_id)
        name = run_name(
            trial_id, hp.values, self._execution(callbacks, trial_id)
        )
        values = trial_hparams(hp.space, hp.values)
        objective = tuner.oracle.objective
        result, keras_runs, unused = [], [], []
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
                callback = callback.with_log_dir(
                    run_dir,
                    session_group=group_name(trial_id),
                    hparams=values,
                    objective=callback.objective or _first(objective),
                )
            else:
                if os.path.normpath(str(callback.log_dir)) != (
                    os.path.normpath(root)
                ):
                    unused.append(str(callback.log_dir))
                callback.log_dir = run_dir
                keras_runs.append(run_dir)
            result.append(callback)
        for log_dir in unused:
            remove_unused_run(log_dir)
        monitored = {
            c.log_dir for c in result if isinstance(c, BatchNormMonitor)
        }
        for run_dir in dict.fromkeys(keras_runs):
            if run_dir not in monitored:
                metrics = _keras_metrics(objective)
                result.append(
                    _HParamsWriter(
                        run_dir, values, group_name(trial_id), metrics
                    )
                )
        return result


def _first(objective):
    """The first of keras-tuner's objectives (several make a
    `MultiObjective`), or `None` for its default one."""
    objectives = getattr(objective, "objectives", None) or [objective]
    first = objectives[0]
    if getattr(first, "name", None) in (None, "default_objective"):
        return None
    return first


def _keras_metrics(objective):
    """The HParams metrics of a run written by Keras's `TensorBoard`
    alone: the objectives, then the validation loss."""
    names = list(dict.fromkeys([*_objective_names(objective), "val_loss"]))
    return [epoch_metric(name, keras_logs=True) for name in names]
