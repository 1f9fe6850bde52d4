"""A keras-tuner HyperModel that guards and logs batch normalization."""

import collections
import os

import keras
import keras_tuner
import numpy as np

from bn_keras.callbacks._event_writer import SummaryWriter
from bn_keras.callbacks._nonfinite_guard import NonFiniteGuard
from bn_keras.callbacks._statistics import nonfinite
from bn_keras.callbacks._statistics import read_statistics
from bn_keras.callbacks.batch_norm_monitor import BatchNormMonitor
from bn_keras.models.find_batchnorm import find_batchnorm


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
    """Writes a trial's HParams to `log_dir` when training starts.

    The summary is the one `tensorboard.plugins.hparams.api.KerasCallback`
    writes, written as `BatchNormMonitor` writes its own: through
    `tf.summary` on TensorFlow, without TensorFlow on the other backends.
    """

    def __init__(self, log_dir, hparams, trial_id):
        super().__init__()
        self.log_dir = log_dir
        self.hparams = hparams
        self.trial_id = trial_id

    def on_train_begin(self, logs=None):
        from tensorboard.plugins.hparams import summary_v2

        os.makedirs(self.log_dir, exist_ok=True)
        writer = SummaryWriter(self.log_dir)
        try:
            writer.write(
                summary_v2.hparams_pb(self.hparams, trial_id=self.trial_id),
                step=0,
            )
        finally:
            writer.close()


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


def _tuner_trial(callbacks):
    """The trial that keras-tuner is running, from its own callback.

    keras-tuner passes `HyperModel.fit` the trial only through the callback
    that forwards the epoch events to the tuner (it has `tuner` and
    `trial` attributes); `None` when `fit` runs outside a search.
    """
    for callback in callbacks:
        trial = getattr(callback, "trial", None)
        if trial is not None and hasattr(callback, "tuner"):
            if getattr(trial, "trial_id", None) is not None:
                return trial
    return None


def _redirected_by_keras_tuner(callback):
    """keras-tuner moves only a `TensorBoard` named exactly so, on TF."""
    return (
        type(callback).__name__ == "TensorBoard"
        and keras.backend.backend() == "tensorflow"
    )


def _execution_of(log_dir, trial_id):
    """`N` for a log dir `.../<trial_id>/execution<N>`, else `None`."""
    head, tail = os.path.split(os.path.normpath(str(log_dir)))
    if os.path.basename(head) == str(trial_id) and tail.startswith(
        "execution"
    ):
        number = tail[len("execution") :]
        if number.isdigit():
            return int(number)
    return None


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

    **One log folder per trial.** keras-tuner gives each trial's
    `keras.callbacks.TensorBoard` its own folder,
    `<log_dir>/<trial_id>/execution<N>`, with the trial's HParams, but only
    for a callback whose class is named exactly `TensorBoard` and only on
    the TensorFlow backend. In a search, this `fit` does the same for the
    other callbacks passed to `search`: any `keras.callbacks.TensorBoard`
    subclass it left alone, and every `bn_keras.callbacks.BatchNormMonitor`
    (replaced by `monitor.with_log_dir(...)`, so that its `batchnorm` run
    lands next to the trial's `train` and `validation` runs). Each trial
    folder gets the HParams summary once. Give the monitor and the
    TensorBoard callback the same `log_dir`.

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

    def __init__(self, *, name=None, tunable=True):
        super().__init__(name=name, tunable=tunable)
        self._executions = collections.Counter()

    def fit(self, hp, model, *args, **kwargs):
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
        trial = _tuner_trial(callbacks)
        if trial is not None:
            callbacks = self._trial_callbacks(callbacks, trial, hp)
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

    def _trial_callbacks(self, callbacks, trial, hp):
        """The callbacks with TensorBoard-like ones moved to the trial."""
        trial_id = str(trial.trial_id)
        execution, hparams_dirs = None, set()
        for callback in callbacks:
            if isinstance(
                callback, keras.callbacks.TensorBoard
            ) and _redirected_by_keras_tuner(callback):
                found = _execution_of(callback.log_dir, trial_id)
                if found is not None:
                    execution = found
                    hparams_dirs.add(os.path.normpath(str(callback.log_dir)))
        if execution is None:
            execution = self._executions[trial_id]
        self._executions[trial_id] = execution + 1

        def trial_dir(log_dir):
            return os.path.join(
                str(log_dir), trial_id, f"execution{execution}"
            )

        result, new_dirs = [], []
        for callback in callbacks:
            if isinstance(callback, BatchNormMonitor):
                callback = callback.with_log_dir(trial_dir(callback.log_dir))
                new_dirs.append(callback.log_dir)
            elif isinstance(
                callback, keras.callbacks.TensorBoard
            ) and not _redirected_by_keras_tuner(callback):
                callback.log_dir = trial_dir(callback.log_dir)
                new_dirs.append(callback.log_dir)
            result.append(callback)
        values = _hparams(hp)
        for log_dir in new_dirs:
            key = os.path.normpath(log_dir)
            if key not in hparams_dirs:
                hparams_dirs.add(key)
                result.append(_HParamsWriter(log_dir, values, trial_id))
        return result
