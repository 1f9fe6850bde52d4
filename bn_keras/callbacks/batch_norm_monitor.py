"""TensorBoard monitoring of batch normalization layers during `fit`."""

from __future__ import annotations

import collections
import os
import tempfile
import warnings
from typing import Any
from typing import Literal

import keras
import numpy as np
from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.histogram.summary_v2 import histogram_pb

from bn_keras._statistics import as_float64
from bn_keras._statistics import read_statistics
from bn_keras._validation import check_bool
from bn_keras._validation import check_keywords
from bn_keras._validation import is_integer
from bn_keras.callbacks import _alerts
from bn_keras.callbacks._event_writer import SummaryWriter
from bn_keras.callbacks._figures import affine_figures
from bn_keras.callbacks._figures import clipping
from bn_keras.callbacks._figures import constant_channels
from bn_keras.callbacks._figures import drift_figures
from bn_keras.callbacks._figures import probe_layer_figures
from bn_keras.callbacks._figures import renorm_figures
from bn_keras.callbacks._figures import window_statistics
from bn_keras.callbacks._hparams import check_values
from bn_keras.callbacks._hparams import experiment_summary
from bn_keras.callbacks._hparams import session_summary
from bn_keras.callbacks._hparams import words
from bn_keras.callbacks._layout import EPOCH_METRICS
from bn_keras.callbacks._layout import MAX_DRIFT
from bn_keras.callbacks._layout import MAX_PROBE_GAP
from bn_keras.callbacks._layout import MIN_VARIANCE
from bn_keras.callbacks._layout import NONFINITE
from bn_keras.callbacks._layout import best_tag
from bn_keras.callbacks._layout import layer_category
from bn_keras.callbacks._layout import layout_summary
from bn_keras.callbacks._layout import overview_category
from bn_keras.callbacks._nonfinite_guard import NonFiniteGuard
from bn_keras.callbacks._run_info import accuracy_names
from bn_keras.callbacks._run_info import better
from bn_keras.callbacks._run_info import check_objective
from bn_keras.callbacks._run_info import described_hparams
from bn_keras.callbacks._run_info import fit_callbacks
from bn_keras.callbacks._run_info import is_real
from bn_keras.callbacks._run_info import keras_tensorboard
from bn_keras.callbacks._run_info import model_figures
from bn_keras.callbacks._run_info import run_metrics
from bn_keras.callbacks._run_info import scalar
from bn_keras.callbacks._tags import batchnorm_tags
from bn_keras.callbacks._text_summary import placements
from bn_keras.callbacks._text_summary import summary_markdown
from bn_keras.callbacks._text_summary import text_summary
from bn_keras.models._tracing import is_array_like
from bn_keras.models._tracing import model_inputs
from bn_keras.models._tracing import record_inputs

HISTOGRAM_BUCKETS = 30  # as keras.callbacks.TensorBoard
#: Histogram tags start with this, apart from the layers' scalars.
HISTOGRAM_PREFIX = "histograms"

# Figures added to `logs` at each epoch end.
LOG_MAX_DRIFT = "bn_max_drift_in_std"
LOG_MIN_VARIANCE = "bn_min_moving_variance"
LOG_MAX_PROBE_GAP = "bn_max_probe_gap"
LOG_NONFINITE = "bn_nonfinite_layers"

#: The layers' statistics at a moment, and the training steps done then
#: (the optimizer's `iterations`; `None` without one).
Reading = collections.namedtuple("Reading", ["states", "steps"])


def _steps_between(earlier, later):
    if earlier.steps is None or later.steps is None:
        return 0
    return later.steps - earlier.steps


def _check_hparams(hparams):
    if hparams is None or hparams is False:
        return hparams
    return check_values("hparams", hparams)


class BatchNormMonitor(keras.callbacks.Callback):
    """Logs the health of every batch normalization layer to TensorBoard.

    For each batch normalization layer of the model (Keras's and
    bn-keras's, nested ones included, as `bn_keras.find_batchnorm` finds
    them), every epoch or every `update_freq` batches, this callback writes
    scalars under the layer's tag prefix (see **Tags** below):

    - `1_probe_gap` (with `probe_data`): the mean over channels of
      `rms(y_batch - y_moving) / std(y_batch)`, where `y_batch` is the
      layer's output on the probe batch normalized with the batch's own
      statistics (the training transform: ghost batches and renorm's `r`
      and `d` included) and `y_moving` with the moving statistics (the
      inference transform), both from the same input, the one the layer
      receives when the model runs the probe batch in inference mode;
      `probe/gap_max`, the largest channel's gap. Renorm layers also get
      `probe/clipped_fraction`, the fraction of (ghost batch, channel)
      pairs whose `r` or `d` would be clipped on the probe batch. The
      moving statistics are left untouched.
    - `2_mean_drift_in_std`: mean over channels of
      `|change of moving_mean| / sqrt(moving_variance + epsilon)` since the
      previous write, a scale-free figure. (The two names start with digits
      so that they sort first in the layer's group of TensorBoard's Time
      Series dashboard.)
    - `moving_mean/drift`: L2 norm of the change of the moving mean since
      the previous write; `moving_mean/drift_from_start`: since this `fit`
      began.
    - `moving_variance/drift`, `moving_variance/drift_from_start`: the same
      norms for the moving variance; `moving_variance/drift_in_std`: mean
      over channels of `|change of log(moving_variance + epsilon)|`;
      `moving_variance/min` (constant channels left out, see below),
      `moving_variance/mean` and `moving_variance/max`.
    - `gamma/{mean,std,min,max}`, `beta/{mean,std,min,max}`, and
      `gamma/dead_fraction`, the fraction of channels with `|gamma| < 1e-3`.
    - Renorm layers: `renorm/rmax` and `renorm/dmax`, the bounds in force
      (those set; a `RenormClipping` schedule is evaluated at the layer's
      step), and `renorm/clipped_fraction`, the fraction of channels whose
      `r` or `d` was clipped in the last training batch. The batch's mean
      and standard deviation are recovered exactly (to float32 rounding)
      from that batch's update of `renorm_mean` and `renorm_stddev`, which
      the callback snapshots just before the batch. It is not written for
      ghost-batch renorm layers (their per-ghost `r` and `d` cannot be
      recovered from the pooled update), nor with `steps_per_execution > 1`.
    - `moving_variance/constant_channels` and, with `probe_data`,
      `probe/constant_channels`: how many channels are constant on the
      data they are measured on.
    - Histograms `histograms/<prefix>/{gamma,beta,moving_mean,
      moving_variance}` (when `histograms=True`; skipped while the values
      are not all finite, and left to Keras's `TensorBoard` when it writes
      histograms to the same `log_dir`), under a prefix of their own so
      that the layers' groups in Time Series hold scalars only.

    **Constant channels.** A channel whose input is constant (a pixel that
    is 0 in every image, a ReLU unit that is 0 on every row) has no
    variance: its gap would be infinite and its moving variance decays
    towards 0, which looks like a collapse. Such channels are counted and
    left out of the gap and of `moving_variance/min`, never turned into an
    infinity or a false alarm; a figure whose every channel is constant is
    not written. On the probe, a channel is constant when it holds one
    value in every row of each batch the layer normalizes over (the probe
    batch, or each of its ghost batches). In the moving variance, a
    channel is constant when every training batch since the previous
    write had zero variance in it: the weighted mean of those batches'
    variances, recovered from the moving variance's update
    (`v_new = v_old * m^k + (1 - m) * sum(m^j * batch_variance)` over the
    `k` steps counted by the optimizer's `iterations`), is 0 within
    float32 rounding (for renorm layers, whose moving variance derives
    from the moving average of `sqrt(variance + epsilon)`: that average's
    batches are `sqrt(epsilon)`). A test against epsilon would not do: a
    feature of small scale has a real variance below epsilon. Non-finite
    statistics are reported as they are.

    **Each epoch.** At every epoch end it writes the model-wide
    `batchnorm/max_drift_in_std` (largest `2_mean_drift_in_std` over
    layers, over the epoch), `batchnorm/min_moving_variance`,
    `batchnorm/nonfinite_layers` and, with `probe_data`,
    `batchnorm/max_probe_gap`; the model's epoch metrics from `logs` under
    `epoch/` (`epoch/val_loss`, `epoch/val_accuracy`, `epoch/loss`, ...),
    unless Keras's `TensorBoard` callback of the same `fit` writes them to
    the same `log_dir` (its `train` and `validation` runs); with an
    `objective`, its best value so far, `epoch/best_<name>` (for example
    `epoch/best_val_accuracy`); and the alerts (below). A model without
    batch normalization gets the epoch metrics, the dashboards, and 0 for
    the largest gap and drift, the non-finite layers and the unhealthy
    layers (it has none), so that a baseline without BN keeps its place in
    a comparison, in HParams' parallel coordinates too (which drop a
    session that lacks a metric).

    **Steps.** The epoch figures are written at step = the epoch's number
    counted from 1, so that "epoch 11" is step 11 (with Keras's
    `TensorBoard` in the same `log_dir`: at Keras's step, the epoch
    counted from 0, so that both callbacks' curves line up), whatever
    `update_freq` is. The layers' figures are written at the same steps
    with `update_freq="epoch"`, and otherwise at the number of batches
    since the start of `fit`.

    **Alerts.** At every epoch end the monitor runs the detectors of
    `bn_keras.diagnose` (`bn-keras doctor`) on what it measured: each
    alert is a `bn_keras.diagnosis.Finding`, with the doctor's stable
    code, the layers it concerns, a message with the evidence and a
    remedy, in the doctor's words. Non-finite statistics (an error);
    `statistics-mismatch` (a warning): moving statistics that lag behind
    the training batches (the batches' mean and variance over the epoch,
    recovered exactly from the update of the moving averages, against the
    moving statistics, in the layer's median channel) or, with
    `probe_data`, a probe gap beyond batch noise; `noisy-batch-statistics`
    (a warning): a probe gap that the noise of tiny batches (ghost batches
    of a few samples) explains; `renorm-clipping-saturated` (a warning):
    renorm's `r` or `d` clipped on nearly every channel write after
    write; collapsed variance, dead channels (`|gamma| < 1e-3`) and
    constant channels (notes). `alerts/unhealthy_layers`, how many layers
    have an error or a warning (0 for a healthy run), opens the Overview;
    from the first epoch an alert fires, `alerts/<code>` holds how many
    layers it concerns (0 once it clears), charted at the end of the
    Overview (where TensorBoard puts the charts only some runs have when
    it merges their layouts), and the text summary lists it with its
    remedy (the summary written as training ends also lists the alerts
    that fired earlier and cleared). A statistic that is not finite
    (checked at every write and epoch end) is also reported once per
    layer with a `RuntimeWarning` naming the layer; with
    `stop_on_nonfinite=True` training then stops.

    **Dashboards.** A custom-scalars layout (TensorBoard's "Custom
    Scalars"): an "Overview" category, the only one open at first, with
    `alerts/unhealthy_layers`, the objective's best value so far, the
    epoch metrics (Keras's `train` and `validation` runs side by side in
    one chart when Keras's `TensorBoard` writes them; else validation,
    then training, curves, a chart each; the training curves alone when
    `fit` has no validation data), the model-wide figures and the alerts
    that have fired; then one closed
    category per layer, in forward order, titled with its tag prefix. A
    line chart draws one figure, so that every run is one line of its own
    colour; the moving variance, gamma and beta are margin charts (the
    mean in a band from min to max). Figures that are constant unless
    something is wrong (dead and constant channels) have no chart: their
    alerts say when they are not zero. A text summary `batchnorm/layers`
    (TensorBoard's "Text"), written as training begins and ends: how
    epochs are counted, the objective's best value and epoch, the run's
    hyperparameters, a table of the layers in forward order with their
    placement in the built graph and their kind, momentum, ghost batch
    size and renorm settings, and the alerts with what to do. An HParams
    session (TensorBoard's "HParams"): `hparams`, or by default a
    description of the model's BN (where it sits relative to the
    activations, its kind, momentum and number of layers, then each
    layer), with the objective (best, then final), the validation metrics,
    the model-wide figures and the training metrics; so that several runs
    of a notebook compare there with no code of yours. The experiment's
    config, which lists them, is written in every run.

    **Tags.** A layer's tags start with `bn<NN>-<name>`, named after what
    it normalizes: the first layer with weights (Dense, convolution, ...)
    or merge layer (`Add`, `Concatenate`) met walking back from the BN's
    input through layers that hold no weights (activations, pooling,
    `Flatten`, other BN layers), or the model's input. `NN` is that
    layer's position among the model's layers with weights and merges in
    forward order, from 1 (`00` for the input), and `<name>` its name if
    you gave it one (with those you gave the models and blocks around it,
    joined by dots), else its class in snake case (`input` for the
    input): `bn00-input`, `bn01-conv2d`, `bn02-hidden`,
    `bn03-block_1.dense`. A second BN of the same layer gets a letter:
    `bn02b-hidden`. Names Keras gives automatically (`conv2d_4`) count the
    layers built so far in the process and are never used, so the tags are
    the same in every process, and the BN that normalizes the same layer
    of an architecture has the same tag whatever the placement (the BN
    after the second convolution in `layer-bn-act`, the one before the
    third in `bn-act-layer`): runs of `bn-keras compare` and
    `bn-keras search` overlay layer by layer, and a layer without a
    counterpart in another run is absent there. The text summary maps
    each tag to the layer's path.

    At every epoch end it adds to `logs`, for `EarlyStopping`, a tuner
    objective or `History`: `bn_max_drift_in_std`,
    `bn_min_moving_variance`, `bn_nonfinite_layers` and, with
    `probe_data`, `bn_max_probe_gap` (NaN where undefined). Callbacks
    placed after this one see them.

    **Where it writes.** Event files go to `log_dir` itself: the run is
    `log_dir`, beside the `train` and `validation` runs that
    `keras.callbacks.TensorBoard` given the same `log_dir` writes in its
    subfolders. On the TensorFlow backend it writes with `tf.summary`; on
    the other backends with TensorBoard's own record writer, which needs
    no TensorFlow (and does not import it when installed). A `log_dir`
    that cannot be written raises a `ValueError` in `on_train_begin`,
    before the first batch.

    **keras-tuner.** keras-tuner moves only callbacks whose class is named
    `TensorBoard` to each trial's folder. For a trial, use
    `monitor.with_log_dir(path)`, a copy of the monitor writing to the
    trial's run folder; `bn_keras.tuner.BNHyperModel` does it for you.

    Args:
        log_dir: Path of the directory to write to, usually the one given
            to `keras.callbacks.TensorBoard`.
        update_freq: `"epoch"`, or a positive integer: write the layers'
            figures every that many batches. Defaults to `"epoch"`.
        histograms: Whether to write histograms of gamma, beta and the
            moving statistics. Defaults to `True`.
        probe_data: Optional fixed batch of model inputs (an array, a dict
            or list of arrays, or a tuple `(x, y)` whose `y` is ignored)
            for the train/inference gap. Defaults to `None`.
        stop_on_nonfinite: Whether to stop training when a statistic
            becomes NaN or infinite. Defaults to `False`.
        objective: Optional Keras log name the run is ranked by, such as
            `"val_accuracy"` (larger is better; smaller for losses and
            errors: names with `loss`, `error`, `mae`, `mse`,
            `crossentropy`, `hinge` or `divergence`), or an object with
            `name` and `direction`
            (`"min"` or `"max"`), such as `keras_tuner.Objective`. Its best
            value so far is written at every epoch end and comes first in
            HParams. Defaults to `None`.
        hparams: Optional dict from hyperparameter names to `bool`, `int`,
            `float` or `str` values: the run's HParams session. `None`
            describes the model's BN; `False` writes no HParams. Defaults
            to `None`.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((4,)),
    ...     keras.layers.Dense(8),
    ...     bn_keras.layers.BatchNormalization(),
    ...     keras.layers.Dense(1),
    ... ])
    >>> model.compile("sgd", "mse")
    >>> x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    >>> log_dir = tempfile.mkdtemp()
    >>> monitor = bn_keras.callbacks.BatchNormMonitor(log_dir)
    >>> history = model.fit(x, x[:, :1], epochs=2, verbose=0,
    ...                     callbacks=[monitor])
    >>> "bn_max_drift_in_std" in history.history
    True
    >>> [name.startswith("events.out.tfevents") for name in os.listdir(log_dir)]
    [True]
    """

    def __init__(
        self,
        log_dir: str | os.PathLike[str],
        update_freq: int | Literal["epoch"] = "epoch",
        histograms: bool = True,
        probe_data: Any = None,
        stop_on_nonfinite: bool = False,
        objective: str | None = None,
        hparams: dict[str, Any] | Literal[False] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(log_dir, (str, os.PathLike)) or not os.fspath(
            log_dir
        ):
            raise TypeError(
                "Argument `log_dir` must be a non-empty path (a string or "
                f"os.PathLike). Received: log_dir={log_dir!r}"
            )
        if update_freq != "epoch" and (
            not is_integer(update_freq) or update_freq < 1
        ):
            raise ValueError(
                "Argument `update_freq` must be 'epoch' or a positive integer "
                f"(a number of batches). Received: update_freq={update_freq!r}"
            )
        histograms = check_bool("histograms", histograms)
        stop_on_nonfinite = check_bool("stop_on_nonfinite", stop_on_nonfinite)
        if probe_data is not None and not is_array_like(
            model_inputs(probe_data)
        ):
            raise TypeError(
                "Argument `probe_data` must be one batch of model inputs: an "
                "array or tensor, a dict or list of them, or a tuple `(x, y)`. "
                f"Received: probe_data of type {type(probe_data).__name__}"
            )
        self._objective = check_objective(objective)
        self.log_dir = os.fspath(log_dir)
        self.update_freq = (
            update_freq if update_freq == "epoch" else int(update_freq)
        )
        self.histograms = bool(histograms)
        self.probe_data = probe_data
        self.stop_on_nonfinite = bool(stop_on_nonfinite)
        self.objective = objective
        self.hparams = _check_hparams(hparams)
        self.session_group: str | None = None
        self._guard = NonFiniteGuard(stop=self.stop_on_nonfinite)
        self._writer = None
        if self.update_freq == "epoch":
            # Nothing to do at batch ends: keep Keras's default (no-op)
            # method, which lets `fit` dispatch batch-end callbacks
            # asynchronously.
            self.on_train_batch_end = (
                keras.callbacks.Callback.on_train_batch_end.__get__(self)
            )

    @property
    def run_dir(self):
        """The folder the event files go to: `log_dir` itself."""
        return self.log_dir

    def _settings(self):
        """The constructor's arguments but `log_dir` (a subclass with
        arguments of its own adds them)."""
        return {
            "update_freq": self.update_freq,
            "histograms": self.histograms,
            "probe_data": self.probe_data,
            "stop_on_nonfinite": self.stop_on_nonfinite,
            "objective": self.objective,
            "hparams": self.hparams,
        }

    def with_log_dir(
        self,
        log_dir: str | os.PathLike[str],
        session_group: str | None = None,
        **changes: Any,
    ) -> BatchNormMonitor:
        """Returns a new monitor with the same settings writing to `log_dir`.

        The hook for keras-tuner trials (and anything else that gives each
        run its own folder): keras-tuner redirects only callbacks named
        `TensorBoard`.

        Args:
            log_dir: The new monitor's `log_dir`.
            session_group: Optional name of its row in the HParams
                dashboard (runs with the same one, such as the executions
                of one keras-tuner trial, are one row). Defaults to the
                folder's name.
            **changes: Constructor arguments to change, such as `hparams`
                or `objective`.
        """
        settings = self._settings()
        check_keywords("with_log_dir()", changes, sorted(settings))
        settings.update(changes)
        monitor = type(self)(log_dir, **settings)
        monitor.session_group = session_group
        return monitor

    def _sync(self):
        """Attaches the trainer's state to the model's variables.

        Within an epoch the JAX trainer keeps the state apart from the
        variables; Keras's `Callback.model` property syncs it.
        """
        return self.model

    def _reading(self, model):
        """The layers' statistics now, and the training steps done."""
        optimizer = getattr(model, "optimizer", None)
        iterations = getattr(optimizer, "iterations", None)
        steps = None if iterations is None else int(as_float64(iterations))
        return Reading(
            {
                name: read_statistics(layer)
                for name, layer in zip(self._names, self._layers)
            },
            steps,
        )

    # -- training hooks --------------------------------------------------

    def on_train_begin(self, logs=None):
        model = self.model
        tagged = batchnorm_tags(model)
        self._layers = [layer for layer, _ in tagged]
        self._names = [tag for _, tag in tagged]
        keras_board = keras_tensorboard(fit_callbacks(self), self.log_dir)
        self._keras_logs = keras_board is not None
        self._keras_histograms = bool(getattr(keras_board, "histogram_freq", 0))
        # Epoch figures at Keras's steps (from 0) beside its callback,
        # else at the epoch's number (from 1).
        self._epoch_offset = 0 if self._keras_logs else 1
        self._open_writer()
        self._batches_seen = 0
        self._batch_begins = 0
        self._renorm_before = None
        self._guard.set_model(model)
        self._guard.on_train_begin()
        self._steps_per_execution = int(
            getattr(model, "steps_per_execution", 1) or 1
        )
        self._renorm_layers = [
            (name, layer)
            for name, layer in zip(self._names, self._layers)
            if layer.renorm
            and getattr(layer, "virtual_batch_size", None) is None
        ]
        self._best = None  # (value, epoch from 1) of the objective
        self._alerts = _alerts.AlertLog(
            list(zip(self._names, self._layers)), self.params
        )
        self._last_epoch_step = 0
        self._latest = {}  # per tag: (constant channels, probe, figures)
        self._probe_batches = {}  # per tag: (values per channel, samples)
        self._windows = {}  # per tag: the epoch's `Window`
        self._window_start = None  # the reading as the epoch began
        self._placements = placements(model) if self._layers else {}
        # The Overview shows validation curves (what the layout says until
        # an epoch ends without validation figures: then training curves,
        # until validation figures come, as with `validation_freq`).
        self._validation = True
        self._epoch_ends = 0
        self._write_hparams()
        self._write_layout()
        if not self._layers:
            warnings.warn(
                "BatchNormMonitor: the model has no batch normalization "
                "layer; only its epoch metrics will be logged (for the "
                "Overview's comparison of runs).",
                stacklevel=2,
            )
            return
        self._start = self._reading(model)
        self._last = self._epoch_start = self._start
        self._last_step = 0
        self._last_probe = None  # the probe of the last write, once written
        self._alerts.update(_alerts.collect(self._evidence(self._start.states)))
        self._write_text(
            "Written as training began; the summary written as it ended "
            "lists the alerts found during training.",
            step=0,
        )

    def on_epoch_begin(self, epoch, logs=None):
        # The statistics the epoch's moving averages start from, read after
        # the previous epoch's callbacks (`PreciseBN` may have set them).
        if self._layers:
            self._window_start = self._reading(self._sync())

    def on_train_batch_begin(self, batch, logs=None):
        self._batch_begins += 1
        if not self._renorm_layers or self._steps_per_execution != 1:
            return
        if self.update_freq == "epoch":
            steps = (self.params or {}).get("steps")
            wanted = steps is None or batch == steps - 1
        else:
            wanted = (self._batches_seen + 1) % self.update_freq == 0
        if wanted:
            self._sync()
            self._renorm_before = (
                self._batch_begins,
                {
                    name: (
                        as_float64(layer.renorm_mean),
                        as_float64(layer.renorm_stddev),
                    )
                    for name, layer in self._renorm_layers
                },
            )

    def on_train_batch_end(self, batch, logs=None):
        self._batches_seen += 1
        if self._layers and self._batches_seen % self.update_freq == 0:
            self._write(self._batches_seen)

    def on_epoch_end(self, epoch, logs=None):
        step = epoch + self._epoch_offset
        self._last_epoch_step = step
        values = self._epoch_values(logs or {})
        self._switch_layout(values)
        summary = summary_pb2.Summary(value=self._epoch_scalars(epoch, values))
        if self._layers:
            reading, figures = self._epoch_figures(step)
            wide = model_figures(figures, reading.states)
            summary.value.extend(scalar(t, v) for t, v in wide.items())
            summary.value.extend(self._alert_scalars(reading.states, epoch + 1))
            if logs is not None:
                logs[LOG_MAX_DRIFT] = float(wide[MAX_DRIFT])
                logs[LOG_MIN_VARIANCE] = float(wide.get(MIN_VARIANCE, np.nan))
                logs[LOG_NONFINITE] = float(wide[NONFINITE])
                if self.probe_data is not None:
                    logs[LOG_MAX_PROBE_GAP] = float(
                        wide.get(MAX_PROBE_GAP, np.nan)
                    )
        else:
            summary.value.extend(self._without_batchnorm())
        if summary.value:
            self._writer.write(summary, step)

    def _without_batchnorm(self):
        """A model without BN: no gap, no drift, no layer with NaN or an
        alert; 0 each, so that a baseline keeps its place in every chart
        and in HParams' parallel coordinates (which drop a session that
        lacks a metric)."""
        tags = [MAX_DRIFT, NONFINITE, _alerts.UNHEALTHY]
        if self.probe_data is not None:
            tags.append(MAX_PROBE_GAP)
        return [scalar(tag, 0.0) for tag in tags]

    def on_train_end(self, logs=None):
        if self._writer is None:
            return
        if self._layers:
            # The statistics of the last epoch end: no more training since.
            self._write_text(
                "Written as training ended.", step=self._last_epoch_step
            )
        self._writer.close()
        self._writer = None

    # -- each epoch ------------------------------------------------------

    def _epoch_values(self, logs):
        """Keras's epoch metrics to write, `{name: float}`: the real-valued
        entries of `logs` but the monitor's own `bn_...` figures."""
        return {
            key: float(value)
            for key, value in logs.items()
            if not key.startswith("bn_") and is_real(value)
        }

    def _switch_layout(self, values):
        """The Overview switches to training curves when the first epoch
        ends without validation figures, and back once they come."""
        validation = "val_loss" in values
        if validation != self._validation and (
            validation or self._epoch_ends == 0
        ):
            self._validation = validation
            self._write_layout()
        self._epoch_ends += 1

    def _epoch_scalars(self, epoch, values):
        """Keras's epoch metrics in this run (`epoch/<name>`), unless
        Keras's `TensorBoard` writes them beside it, and the objective's
        best value so far."""
        scalars = []
        if not self._keras_logs:
            scalars += [
                scalar(f"{EPOCH_METRICS}/{key}", value)
                for key, value in values.items()
            ]
        objective = self._objective
        if objective is not None and objective.name in values:
            value = values[objective.name]
            best = None if self._best is None else self._best[0]
            if better(objective, value, best):
                self._best = (value, epoch + 1)
            if self._best is not None:
                scalars.append(scalar(best_tag(objective.name), self._best[0]))
        return scalars

    def _epoch_figures(self, step):
        """The layers' reading and figures over the epoch just ended
        (written at `step` with `update_freq="epoch"`)."""
        if self.update_freq == "epoch":
            reading, figures = self._write(step)
        elif (
            self._last_probe is not None
            and self._last_step == self._batches_seen
        ):
            # The epoch's last batch was just written, and nothing has
            # trained since (validation runs in inference mode): its
            # reading and probe stand.
            reading = self._last
            figures = self._figures(
                reading, self._epoch_start, self._last_probe, None
            )
        else:
            reading = self._reading(self._sync())
            probe = self._probe() if self.probe_data is not None else {}
            figures = self._figures(reading, self._epoch_start, probe, None)
            self._check_finite(reading.states)
        # The training batches' statistics over the epoch, for the alerts.
        start = self._window_start or self._epoch_start
        steps = _steps_between(start, reading)
        self._windows = {
            name: window_statistics(
                layer, reading.states[name], start.states[name], steps
            )
            for name, layer in zip(self._names, self._layers)
        }
        self._epoch_start = reading
        return reading, figures

    # -- alerts ----------------------------------------------------------

    def _evidence(self, states):
        """A `LayerEvidence` per layer, from `states`, the last figures,
        the epoch's windows and the renorm history."""
        evidence = []
        for name, layer in zip(self._names, self._layers):
            constant, probe, _ = self._latest.get(
                name, (np.zeros(0, dtype=bool), {}, {})
            )
            if constant.size == 0:
                constant = np.zeros(
                    np.shape(states[name].get("moving_variance")), dtype=bool
                )
            evidence.append(
                _alerts.LayerEvidence(
                    name,
                    self._path(name, layer),
                    layer,
                    states[name],
                    constant,
                    probe=probe,
                    batch=self._probe_batches.get(name),
                    window=self._windows.get(name),
                    clipped=tuple(self._alerts.clipped.get(name, ())),
                    bounds=clipping(layer) if layer.renorm else {},
                    warmup=self._alerts.warmup(layer),
                )
            )
        return evidence

    def _path(self, name, layer):
        placement = self._placements.get(id(layer))
        return placement[0] if placement else layer.name

    def _alert_scalars(self, states, epoch):
        """Collects the alerts of the epoch (from 1); `alerts/<code>` of
        every code that has fired (the layout gets a chart for each new
        one)."""
        findings = _alerts.collect(self._evidence(states))
        if self._alerts.update(findings, epoch):
            self._write_layout()
        counts = _alerts.counts(findings)
        unhealthy = _alerts.unhealthy_layers(findings)
        return [scalar(_alerts.UNHEALTHY, unhealthy)] + [
            scalar(f"{_alerts.ALERTS}/{code}", counts.get(code, 0))
            for code in self._alerts.fired
        ]

    # -- the dashboards --------------------------------------------------

    def _write_layout(self):
        """The Custom Scalars layout: the Overview, then each layer's."""
        probe = self.probe_data is not None
        order = {code: i for i, code in enumerate(_alerts.MONITOR_CODES)}
        fired = self._alerts.fired
        codes = sorted(fired, key=lambda c: order.get(c, len(order)))
        objective = self._objective
        categories = [
            overview_category(
                [(code, fired[code]) for code in codes],
                accuracy_names(self.model),
                probe,
                objective=None if objective is None else objective.name,
                validation=self._validation,
                keras_logs=self._keras_logs,
            )
        ]
        categories += [
            layer_category(name, layer, probe)
            for name, layer in zip(self._names, self._layers)
        ]
        self._writer.write(layout_summary(categories), step=0)

    def _hparams_values(self):
        if self.hparams is not None:
            return self.hparams
        return described_hparams(
            list(zip(self._names, self._layers)), self._placements
        )

    def _write_hparams(self):
        """The run's HParams session and the experiment's config."""
        if self.hparams is False:
            return
        values = self._hparams_values()
        group = self.session_group or os.path.basename(
            os.path.normpath(self.log_dir)
        )
        metrics = run_metrics(
            self._objective,
            accuracy_names(self.model),
            self._keras_logs,
            self.probe_data is not None,
        )
        self._writer.write(experiment_summary(values, metrics), step=0)
        self._writer.write(session_summary(values, group), step=0)

    def _notes(self, note):
        """The text summary's paragraphs: `note`, how epochs are counted,
        the objective's best value."""
        if self._keras_logs:
            steps = (
                "Epochs are counted from 1 here; the epoch charts' steps "
                "count them from 0, as Keras's TensorBoard callback does "
                "(epoch 1 is step 0)."
            )
        else:
            steps = (
                "Epochs are counted from 1, as the epoch charts' steps "
                "count them (epoch 1 is step 1)."
            )
        notes = [note, steps]
        if self._objective is not None and self._best is not None:
            value, epoch = self._best
            notes.append(
                f"Best {words(self._objective.name)}: **{value:.6g}** at "
                f"epoch {epoch} of {self._epoch_ends}."
            )
        return notes

    def _write_text(self, note, step):
        """Writes the text summary of the layers, with their alerts."""
        rows = [
            (name, layer, self._placements.get(id(layer)))
            for name, layer in zip(self._names, self._layers)
        ]
        hparams = self._hparams_values() if self.hparams is not False else {}
        markdown = summary_markdown(
            rows,
            self._alerts.findings,
            self._notes(note),
            hparams,
            self._alerts.cleared(),
        )
        self._writer.write(text_summary(markdown), step)

    # -- figures ---------------------------------------------------------

    def _figures(self, reading, previous, probe, snapshot):
        """`{tag: {figure: value}}` of every layer, from `previous` (a
        `Reading`) to `reading`; remembers the constant channels and probe
        figures for the text summary's alerts."""
        steps = _steps_between(previous, reading)
        figures = {}
        for name, layer in zip(self._names, self._layers):
            now, before = reading.states[name], previous.states[name]
            constant = constant_channels(layer, now, before, steps)
            layer_figures = drift_figures(
                now, before, self._start.states[name], layer.epsilon, constant
            )
            layer_figures.update(affine_figures(now))
            if layer.renorm:
                layer_figures.update(
                    renorm_figures(layer, now, (snapshot or {}).get(name))
                )
            layer_figures.update(probe.get(name, {}))
            figures[name] = layer_figures
            self._latest[name] = (constant, probe.get(name, {}), layer_figures)
        return figures

    def _probe(self):
        """Probe-batch figures per layer, moving statistics left unchanged."""
        x = model_inputs(self.probe_data)
        with record_inputs(self._layers) as calls:
            self.model(x, training=False)
        first = {}
        for layer, inputs, mask in calls:
            first.setdefault(id(layer), (inputs, mask))
        figures = {}
        for name, layer in zip(self._names, self._layers):
            if id(layer) in first:
                layer_figures, batch = probe_layer_figures(
                    layer, *first[id(layer)]
                )
                figures[name] = layer_figures
                self._probe_batches[name] = batch
        return figures

    # -- writing ---------------------------------------------------------

    def _open_writer(self):
        run_dir = self.run_dir
        if "://" not in run_dir:  # remote file systems: left to the writer
            try:
                os.makedirs(run_dir, exist_ok=True)
                with tempfile.TemporaryFile(dir=run_dir):
                    pass
            except OSError as error:
                raise ValueError(
                    "Argument `log_dir` must be a directory that "
                    f"BatchNormMonitor can create and write to; writing to "
                    f"{run_dir!r} failed: {error}. "
                    f"Received: log_dir={self.log_dir!r}"
                ) from error
        if self._writer is not None:
            self._writer.close()
        self._writer = SummaryWriter(run_dir)

    def _renorm_snapshot(self):
        """The renorm statistics from just before the last batch, if the
        callback took them then."""
        if self._renorm_before is None:
            return None
        begins, snapshot = self._renorm_before
        self._renorm_before = None
        return snapshot if begins == self._batch_begins else None

    def _write(self, step):
        """Writes the layers' figures at `step`; returns the reading and
        figures."""
        reading = self._reading(self._sync())
        probe = self._probe() if self.probe_data is not None else {}
        figures = self._figures(
            reading, self._last, probe, self._renorm_snapshot()
        )
        summary = summary_pb2.Summary()
        layers = dict(zip(self._names, self._layers))
        for name, layer_figures in figures.items():
            self._alerts.record_write(name, layer_figures, layers[name])
            summary.value.extend(
                scalar(f"{name}/{key}", value)
                for key, value in layer_figures.items()
            )
            if self.histograms and not self._keras_histograms:
                self._add_histograms(summary, name, reading.states[name])
        self._writer.write(summary, step)
        self._last = reading
        self._last_step = step
        self._last_probe = probe
        self._check_finite(reading.states)
        return reading, figures

    def _add_histograms(self, summary, name, now):
        for key in ("gamma", "beta", "moving_mean", "moving_variance"):
            if key in now and np.all(np.isfinite(now[key])):
                summary.value.extend(
                    histogram_pb(
                        f"{HISTOGRAM_PREFIX}/{name}/{key}",
                        now[key],
                        buckets=HISTOGRAM_BUCKETS,
                    ).value
                )

    def _check_finite(self, states):
        """Warns once about each layer with non-finite statistics; stops
        training with `stop_on_nonfinite=True`."""
        stop = ""
        if self.stop_on_nonfinite:
            stop = " Stopping training (stop_on_nonfinite=True)."
        layers = dict(zip(self._names, self._layers))
        for name, bad in self._guard.check(states).items():
            warnings.warn(
                "BatchNormMonitor: batch normalization layer "
                f"'{layers[name].name}' has non-finite statistics "
                f"({', '.join(bad)} contain NaN or Inf; tags {name}/...). Its "
                "inference output is now wrong; look for a NaN or Inf batch "
                f"or a diverging loss.{stop}",
                RuntimeWarning,
                stacklevel=2,
            )
