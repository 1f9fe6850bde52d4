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
from tensorboard.compat.proto import tensor_pb2
from tensorboard.compat.proto import tensor_shape_pb2
from tensorboard.compat.proto import types_pb2
from tensorboard.plugins.histogram.summary_v2 import histogram_pb
from tensorboard.plugins.scalar import metadata as scalar_metadata

from bn_keras._statistics import as_float64
from bn_keras._statistics import nonfinite
from bn_keras._statistics import read_statistics
from bn_keras._validation import check_bool
from bn_keras._validation import is_integer
from bn_keras.callbacks._event_writer import SummaryWriter
from bn_keras.callbacks._figures import MEAN_DRIFT_IN_STD
from bn_keras.callbacks._figures import PROBE_GAP
from bn_keras.callbacks._figures import affine_figures
from bn_keras.callbacks._figures import clipped_fraction
from bn_keras.callbacks._figures import clipping
from bn_keras.callbacks._figures import constant_channels
from bn_keras.callbacks._figures import constant_in_batches
from bn_keras.callbacks._figures import drift_figures
from bn_keras.callbacks._figures import ghost_moments
from bn_keras.callbacks._figures import ghost_of_rows
from bn_keras.callbacks._figures import probe_gap
from bn_keras.callbacks._layout import EPOCH_METRICS
from bn_keras.callbacks._layout import MAX_DRIFT
from bn_keras.callbacks._layout import MAX_PROBE_GAP
from bn_keras.callbacks._layout import MIN_VARIANCE
from bn_keras.callbacks._layout import NONFINITE
from bn_keras.callbacks._layout import RUN_NAME
from bn_keras.callbacks._layout import layer_category
from bn_keras.callbacks._layout import layout_summary
from bn_keras.callbacks._layout import overview_category
from bn_keras.callbacks._nonfinite_guard import NonFiniteGuard
from bn_keras.callbacks._tags import batchnorm_tags
from bn_keras.callbacks._text_summary import layer_alerts
from bn_keras.callbacks._text_summary import placements
from bn_keras.callbacks._text_summary import summary_markdown
from bn_keras.callbacks._text_summary import text_summary
from bn_keras.layers._formulas import renorm_update_input
from bn_keras.models._tracing import channels_last_2d
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

#: What `tensorboard.plugins.scalar.summary_v2.scalar_pb` attaches to every
#: scalar; made once (scalar_pb makes it, and a tensor proto through NumPy,
#: for every value: a third of a write's time on a model of 52 BN layers).
_SCALAR_METADATA = scalar_metadata.create_summary_metadata(
    display_name=None, description=None
)


def _is_real(value):
    """Whether a `logs` entry is a number (a float or a scalar tensor)."""
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return np.ndim(value) == 0


def _scalar(tag, value):
    """A scalar summary value, as `scalar_pb` writes it (a float32)."""
    return summary_pb2.Summary.Value(
        tag=tag,
        metadata=_SCALAR_METADATA,
        tensor=tensor_pb2.TensorProto(
            dtype=types_pb2.DT_FLOAT,
            tensor_shape=tensor_shape_pb2.TensorShapeProto(),
            float_val=[float(np.float32(value))],
        ),
    )


#: The layers' statistics at a moment, and the training steps done then
#: (the optimizer's `iterations`; `None` without one).
Reading = collections.namedtuple("Reading", ["states", "steps"])


def _steps_between(earlier, later):
    if earlier.steps is None or later.steps is None:
        return 0
    return later.steps - earlier.steps


def _accuracy_names(model):
    """Names of the accuracy metrics `model` was compiled with, as Keras
    logs them (a flat list of metrics only)."""
    metrics = (model.get_compile_config() or {}).get("metrics")
    if not isinstance(metrics, (list, tuple)):
        return []
    names = []
    for metric in metrics:
        if isinstance(metric, dict):
            metric = (metric.get("config") or {}).get("name")
        if isinstance(metric, str) and "acc" in metric:
            names.append(metric)
    return names


def _model_figures(figures, states):
    """The model-wide figures of the layers' `figures` (`{tag: {...}}`):
    `{tag: value}`, undefined ones left out."""
    drifts = [f[MEAN_DRIFT_IN_STD] for f in figures.values()]
    variances = [
        f["moving_variance/min"]
        for f in figures.values()
        if "moving_variance/min" in f
    ]
    gaps = [f[PROBE_GAP] for f in figures.values() if PROBE_GAP in f]
    result = {
        MAX_DRIFT: np.max(drifts),
        NONFINITE: sum(bool(nonfinite(now)) for now in states.values()),
    }
    if variances:
        result[MIN_VARIANCE] = np.min(variances)
    if gaps:
        result[MAX_PROBE_GAP] = np.max(gaps)
    return result


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
      `moving_variance/min` (constant channels left out, see below) and
      `moving_variance/mean`.
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
      are not all finite), under a prefix of their own so that the layers'
      groups in Time Series hold scalars only.

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

    It also writes the model-wide `batchnorm/max_drift_in_std` (largest
    `2_mean_drift_in_std` over layers), `batchnorm/min_moving_variance`,
    `batchnorm/nonfinite_layers` and, with `probe_data`,
    `batchnorm/max_probe_gap`; and at every epoch end the model's own
    epoch metrics from `logs` under `epoch/` (`epoch/val_loss`,
    `epoch/val_accuracy`, `epoch/loss`, ...), so that a chart of them draws
    one line per run (Keras's `TensorBoard` callback writes `epoch_loss`
    in both its `train` and `validation` runs). A model without batch
    normalization gets these and the layout only, so that a baseline
    without BN shows in the comparison too. At the start of training it
    writes a custom-scalars layout (TensorBoard's "Custom Scalars"
    dashboard): an "Overview" category first (validation accuracy and loss
    per epoch, or training accuracy and loss when `fit` has no validation
    data, and the model-wide figures), then one category per layer, in
    forward order, titled with its tag prefix, with gamma and beta as bands
    from min to max around the mean. It also writes, at the start and the end of
    training, a text summary `batchnorm/layers` (TensorBoard's "Text"
    dashboard): a table of the layers in forward order with their
    placement, momentum, ghost batch size, renorm settings and alerts
    (non-finite statistics, dead or constant channels, a moving variance
    below epsilon in channels that are not constant).

    **Tags.** A layer's tags start with `bn<N>`, its position in forward
    order counted from 1 (zero-padded to two digits or more: `bn01`), then,
    if the user named the layer or the models and blocks it sits in, a dash
    and those names from the outermost in, joined by dots:
    `bn03-block_a.bn`. Names that Keras gives automatically (the snake case
    name of a class, with an optional `_N`: `batch_normalization_4`) and
    names `insert_batchnorm` and `BNBlock` derive from them (`dense_3_bn`)
    are left out, so two models of one architecture built in one process
    log the same tags, and their runs overlay.

    At every epoch end it adds to `logs`, for `EarlyStopping`, a tuner
    objective or `History`: `bn_max_drift_in_std` (largest
    `2_mean_drift_in_std` over layers, over the epoch),
    `bn_min_moving_variance`, `bn_nonfinite_layers` and, with `probe_data`,
    `bn_max_probe_gap` (NaN where undefined). Callbacks placed after this
    one see them.

    A statistic that is not finite (checked at every write and epoch end)
    is reported once per layer with a `RuntimeWarning` naming the layer;
    with `stop_on_nonfinite=True` training then stops.

    **Where it writes.** Event files go to `os.path.join(log_dir,
    "batchnorm")`, a run of its own beside the `train` and `validation`
    runs of `keras.callbacks.TensorBoard` given the same `log_dir` (a run
    folder written by two writers at once confuses TensorBoard's reader).
    Steps are epochs with `update_freq="epoch"`, and the number of batches
    since the start of `fit` otherwise, as for Keras's callback. On the
    TensorFlow backend it writes with `tf.summary`; on the other backends
    with TensorBoard's own record writer, which needs no TensorFlow (and
    does not import it when installed). A `log_dir` that cannot be written
    raises a `ValueError` in `on_train_begin`, before the first batch.

    **keras-tuner.** keras-tuner moves only callbacks whose class is named
    `TensorBoard` to each trial's folder. For a trial, use
    `monitor.with_log_dir(os.path.join(monitor.log_dir, trial_id,
    f"execution{n}"))`, a copy of the monitor writing to the trial's run
    folder (the one keras-tuner gives Keras's callback).

    Args:
        log_dir: Path of the directory to write to, usually the one given
            to `keras.callbacks.TensorBoard`.
        update_freq: `"epoch"`, or a positive integer: write every that
            many batches. Defaults to `"epoch"`.
        histograms: Whether to write histograms of gamma, beta and the
            moving statistics. Defaults to `True`.
        probe_data: Optional fixed batch of model inputs (an array, a dict
            or list of arrays, or a tuple `(x, y)` whose `y` is ignored)
            for the train/inference gap. Defaults to `None`.
        stop_on_nonfinite: Whether to stop training when a statistic
            becomes NaN or infinite. Defaults to `False`.

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
    >>> sorted(os.listdir(log_dir))
    ['batchnorm']
    """

    def __init__(
        self,
        log_dir: str | os.PathLike[str],
        update_freq: int | Literal["epoch"] = "epoch",
        histograms: bool = True,
        probe_data: Any = None,
        stop_on_nonfinite: bool = False,
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
        self.log_dir = os.fspath(log_dir)
        self.update_freq = (
            update_freq if update_freq == "epoch" else int(update_freq)
        )
        self.histograms = bool(histograms)
        self.probe_data = probe_data
        self.stop_on_nonfinite = bool(stop_on_nonfinite)
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
        """The folder the event files go to: `log_dir/batchnorm`."""
        return os.path.join(self.log_dir, RUN_NAME)

    def with_log_dir(self, log_dir: str | os.PathLike[str]) -> BatchNormMonitor:
        """Returns a new monitor with the same settings writing to `log_dir`.

        The hook for keras-tuner trials (and anything else that gives each
        run its own folder): keras-tuner redirects only callbacks named
        `TensorBoard`.
        """
        return type(self)(
            log_dir,
            update_freq=self.update_freq,
            histograms=self.histograms,
            probe_data=self.probe_data,
            stop_on_nonfinite=self.stop_on_nonfinite,
        )

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
        # The Overview shows validation curves (what the layout says until
        # an epoch ends without validation figures: then training curves,
        # until validation figures come, as with `validation_freq`).
        self._validation = True
        self._epoch_ends = 0
        self._write_layout(validation=True)
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
        self._latest = {}  # per tag: (constant channels, probe figures)
        self._last_step = 0
        self._last_probe = None  # the probe of the last write, once written
        self._placements = placements(model)
        self._write_text(
            self._start.states,
            "Written as training began; the summary written as it ended "
            "lists the alerts.",
        )

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
        self._write_epoch_metrics(epoch, logs or {})
        if not self._layers:
            return
        if self.update_freq == "epoch":
            reading, figures = self._write(epoch)
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
        self._epoch_start = reading
        if logs is not None:
            wide = _model_figures(figures, reading.states)
            logs[LOG_MAX_DRIFT] = float(wide[MAX_DRIFT])
            logs[LOG_MIN_VARIANCE] = float(wide.get(MIN_VARIANCE, np.nan))
            logs[LOG_NONFINITE] = float(wide[NONFINITE])
            if self.probe_data is not None:
                logs[LOG_MAX_PROBE_GAP] = float(wide.get(MAX_PROBE_GAP, np.nan))

    def on_train_end(self, logs=None):
        if self._writer is None:
            return
        if self._layers:
            # The statistics of the last epoch end: no more training since.
            self._write_text(
                self._epoch_start.states,
                "Written as training ended.",
                self._last_step,
            )
        self._writer.close()
        self._writer = None

    # -- the Overview ----------------------------------------------------

    def _write_layout(self, validation):
        """The Custom Scalars layout: the Overview (validation curves, or
        training curves without validation data), then each layer's."""
        probe = self.probe_data is not None
        categories = [
            overview_category(
                _accuracy_names(self.model), probe, validation=validation
            )
        ]
        categories += [
            layer_category(name, layer, probe)
            for name, layer in zip(self._names, self._layers)
        ]
        self._writer.write(layout_summary(categories), step=0)

    def _write_epoch_metrics(self, epoch, logs):
        """Keras's epoch metrics in this run (`epoch/<name>`), so that the
        Overview draws one line per run; the layout switches to training
        curves when the first epoch ends without validation figures, and
        back once they come."""
        validation = "val_loss" in logs
        if validation != self._validation and (
            validation or self._epoch_ends == 0
        ):
            self._validation = validation
            self._write_layout(validation=validation)
        self._epoch_ends += 1
        values = [
            _scalar(f"{EPOCH_METRICS}/{key}", value)
            for key, value in logs.items()
            if not key.startswith("bn_") and _is_real(value)
        ]
        if values:
            step = epoch if self.update_freq == "epoch" else self._batches_seen
            self._writer.write(summary_pb2.Summary(value=values), step)

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
                    self._renorm_figures(name, layer, now, snapshot)
                )
            layer_figures.update(probe.get(name, {}))
            figures[name] = layer_figures
            self._latest[name] = (constant, probe.get(name, {}))
        return figures

    def _renorm_figures(self, name, layer, now, snapshot):
        bounds = clipping(layer)
        figures = {
            f"renorm/{k}": bounds[k] for k in ("rmax", "dmax") if k in bounds
        }
        if snapshot is not None and name in snapshot and layer.trainable:
            old_mean, old_stddev = snapshot[name]
            # The batch's statistics, from the update they made.
            count = None
            if layer.renorm_momentum is None:  # cumulative statistics
                count = as_float64(layer.num_batches_tracked)
            batch_mean, batch_stddev = renorm_update_input(
                old_mean,
                old_stddev,
                now["renorm_mean"],
                now["renorm_stddev"],
                layer.epsilon,
                layer.renorm_momentum,
                count,
            )
            # The bounds of the last batch: the step before the current one.
            step = None
            if getattr(layer, "renorm_schedule", None) is not None:
                step = int(as_float64(layer.renorm_step)) - 1
            figures["renorm/clipped_fraction"] = clipped_fraction(
                batch_mean,
                batch_stddev,
                old_mean,
                old_stddev,
                layer.epsilon,
                clipping(layer, step),
            )
            if count is not None and count == 1:
                # The first cumulative step uses r = 1, d = 0: no clipping.
                figures["renorm/clipped_fraction"] = 0.0
        return figures

    def _probe(self):
        """Probe-batch figures per layer, moving statistics left unchanged."""
        x = model_inputs(self.probe_data)
        with record_inputs(self._layers) as calls:
            self.model(x, training=False)
        first = {}
        for layer, inputs, mask in calls:
            first.setdefault(id(layer), (inputs, mask))
        return {
            name: self._probe_layer(layer, *first[id(layer)])
            for name, layer in zip(self._names, self._layers)
            if id(layer) in first
        }

    def _probe_layer(self, layer, inputs, mask):
        # The training transform without its state update: the updated
        # statistics that `stateless_call` returns are dropped.
        y_batch, _ = layer.stateless_call(
            [v.value for v in layer.trainable_variables],
            [v.value for v in layer.non_trainable_variables],
            inputs,
            training=True,
            mask=mask,
        )
        y_moving = layer(inputs, training=False, mask=mask)
        rows, weights = channels_last_2d(layer, inputs, mask)
        ghosts = ghost_of_rows(layer, int(inputs.shape[0]), len(rows))
        batch_rows, _ = channels_last_2d(layer, y_batch, mask)
        moving_rows, _ = channels_last_2d(layer, y_moving, mask)
        figures = probe_gap(
            batch_rows,
            moving_rows,
            weights,
            constant_in_batches(rows, weights, ghosts),
        )
        if layer.renorm:
            mean, variance = ghost_moments(rows, weights, ghosts)
            figures["probe/clipped_fraction"] = clipped_fraction(
                mean,
                np.sqrt(variance + layer.epsilon),
                as_float64(layer.renorm_mean),
                as_float64(layer.renorm_stddev),
                layer.epsilon,
                clipping(layer),
            )
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
        """Writes every figure at `step`; returns the reading and figures."""
        reading = self._reading(self._sync())
        probe = self._probe() if self.probe_data is not None else {}
        figures = self._figures(
            reading, self._last, probe, self._renorm_snapshot()
        )
        summary = summary_pb2.Summary()
        for name, layer_figures in figures.items():
            summary.value.extend(
                _scalar(f"{name}/{key}", value)
                for key, value in layer_figures.items()
            )
            if self.histograms:
                self._add_histograms(summary, name, reading.states[name])
        summary.value.extend(
            _scalar(tag, value)
            for tag, value in _model_figures(figures, reading.states).items()
        )
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

    def _write_text(self, states, note, step=0):
        """Writes the text summary of the layers, with their alerts."""
        rows = []
        for name, layer in zip(self._names, self._layers):
            constant, probe = self._latest.get(
                name, (np.zeros(0, dtype=bool), {})
            )
            if constant.size == 0:
                constant = np.zeros(
                    np.shape(states[name].get("moving_variance")), dtype=bool
                )
            rows.append(
                (
                    name,
                    layer,
                    self._placements.get(id(layer)),
                    layer_alerts(layer, states[name], constant, probe),
                )
            )
        markdown = summary_markdown(rows, note)
        self._writer.write(text_summary(markdown), step)

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
