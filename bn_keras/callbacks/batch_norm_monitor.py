"""TensorBoard monitoring of batch normalization layers during `fit`."""

import os
import re
import tempfile
import warnings

import keras
import numpy as np
from tensorboard.compat.proto import summary_pb2
from tensorboard.compat.proto import tensor_pb2
from tensorboard.compat.proto import tensor_shape_pb2
from tensorboard.compat.proto import types_pb2
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import metadata as layout_metadata
from tensorboard.plugins.histogram.summary_v2 import histogram_pb
from tensorboard.plugins.scalar.summary_v2 import scalar_pb

from bn_keras._validation import check_bool
from bn_keras._validation import is_integer
from bn_keras.callbacks._event_writer import SummaryWriter
from bn_keras.callbacks._nonfinite_guard import NonFiniteGuard
from bn_keras.callbacks._statistics import as_float64
from bn_keras.callbacks._statistics import dead_channels
from bn_keras.callbacks._statistics import nonfinite
from bn_keras.callbacks._statistics import read_statistics
from bn_keras.layers._formulas import ghost_ids
from bn_keras.layers._formulas import renorm_clipped
from bn_keras.layers._formulas import renorm_ratios
from bn_keras.layers._formulas import renorm_update_input
from bn_keras.models._tracing import PooledMoments
from bn_keras.models._tracing import channels_last_2d
from bn_keras.models._tracing import is_array_like
from bn_keras.models._tracing import model_inputs
from bn_keras.models._tracing import record_inputs
from bn_keras.models.find_batchnorm import find_batchnorm

RUN_NAME = "batchnorm"
HISTOGRAM_BUCKETS = 30  # as keras.callbacks.TensorBoard

# Figures added to `logs` at each epoch end.
LOG_MAX_DRIFT = "bn_max_drift_in_std"
LOG_MIN_VARIANCE = "bn_min_moving_variance"
LOG_MAX_PROBE_GAP = "bn_max_probe_gap"
LOG_NONFINITE = "bn_nonfinite_layers"


def _drift_figures(now, previous, start, epsilon):
    """Drift of the moving statistics since `previous` and `start`."""
    mean, variance = now["moving_mean"], now["moving_variance"]
    change = mean - previous["moving_mean"]
    with np.errstate(invalid="ignore", divide="ignore"):
        log_change = np.log(variance + epsilon) - np.log(
            previous["moving_variance"] + epsilon
        )
        mean_in_std = np.abs(change) / np.sqrt(variance + epsilon)
    return {
        "moving_mean/drift": np.linalg.norm(change),
        "moving_mean/drift_from_start": np.linalg.norm(
            mean - start["moving_mean"]
        ),
        "moving_mean/drift_in_std": np.mean(mean_in_std),
        "moving_variance/drift": np.linalg.norm(
            variance - previous["moving_variance"]
        ),
        "moving_variance/drift_from_start": np.linalg.norm(
            variance - start["moving_variance"]
        ),
        "moving_variance/drift_in_std": np.mean(np.abs(log_change)),
        "moving_variance/min": np.min(variance),
        "moving_variance/mean": np.mean(variance),
    }


def _affine_figures(now):
    figures = {}
    for name in ("gamma", "beta"):
        if name in now:
            values = now[name]
            figures[f"{name}/mean"] = np.mean(values)
            figures[f"{name}/std"] = np.std(values)
            figures[f"{name}/min"] = np.min(values)
            figures[f"{name}/max"] = np.max(values)
    if "gamma" in now:
        figures["gamma/dead_fraction"] = np.mean(dead_channels(now["gamma"]))
    return figures


def _clipping(layer, step=None):
    """Clipping bounds of a renorm layer as floats; missing bounds left out.

    `step` picks the step of a `RenormClipping` schedule (default: the
    layer's current step); fixed bounds ignore it.
    """
    schedule = getattr(layer, "renorm_schedule", None)
    if schedule is not None:
        if step is None:
            step = int(as_float64(layer.renorm_step))
        bounds = schedule(max(int(step), 0))
    else:
        bounds = layer.renorm_clipping or {}
    return {k: float(v) for k, v in bounds.items() if v is not None}


def _clipped_fraction(
    mean, stddev, renorm_mean, renorm_stddev, epsilon, bounds
):
    """Fraction of r and d pairs that the bounds clip.

    `mean` and `stddev` are the batch (or per-ghost, shape `(G, C)`)
    statistics, `renorm_*` the renorm statistics before the batch; r and d
    are the layer's (Keras's) formulas, computed in float64.
    """
    r, d = renorm_ratios(mean, stddev, renorm_mean, renorm_stddev, epsilon)
    return float(np.mean(renorm_clipped(r, d, bounds)))


def _ghost_moments(layer, inputs, mask):
    """Batch statistics of the layer's inputs, per ghost batch if it has
    them: arrays of shape `(G, C)`, the ghost batches as the layer forms
    them."""
    rows, weights = channels_last_2d(layer, inputs, mask)
    batch = int(inputs.shape[0])
    size = getattr(layer, "virtual_batch_size", None)
    if size is None:
        ghost_of_sample = np.zeros(batch, dtype=int)
    else:
        ids, _ = ghost_ids(batch, size)
        ghost_of_sample = keras.ops.convert_to_numpy(ids)
    ghost_of_row = np.repeat(ghost_of_sample, rows.shape[0] // batch)
    means, variances = [], []
    for ghost in range(ghost_of_sample.max() + 1):
        pooled = PooledMoments()
        selected = ghost_of_row == ghost
        pooled.add(
            rows[selected], None if weights is None else weights[selected]
        )
        means.append(pooled.mean)
        variances.append(pooled.variance)
    return np.stack(means), np.stack(variances)


def _weighted_mean(values, weights):
    if weights is None:
        return values.mean(axis=0)
    return (weights[:, None] * values).sum(axis=0) / weights.sum()


def _layout_charts(name, layer, probe):
    """The custom-scalars charts of one layer: `(title, [tag suffixes])`."""
    charts = [
        (
            "moving_mean drift",
            ["moving_mean/drift", "moving_mean/drift_from_start"],
        ),
        ("moving_mean drift_in_std", ["moving_mean/drift_in_std"]),
        (
            "moving_variance drift",
            ["moving_variance/drift", "moving_variance/drift_from_start"],
        ),
        (
            "moving_variance drift_in_std (log)",
            ["moving_variance/drift_in_std"],
        ),
        (
            "moving_variance min and mean",
            ["moving_variance/min", "moving_variance/mean"],
        ),
    ]
    for weight in ("gamma", "beta"):
        if getattr(layer, "scale" if weight == "gamma" else "center"):
            charts.append(
                (
                    weight,
                    [f"{weight}/{s}" for s in ("mean", "std", "min", "max")],
                )
            )
    if layer.scale:
        charts.append(("gamma dead_fraction", ["gamma/dead_fraction"]))
    if layer.renorm:
        charts.append(("renorm bounds", ["renorm/rmax", "renorm/dmax"]))
        clipped = ["renorm/clipped_fraction"]
        if probe:
            clipped.append("probe/clipped_fraction")
        charts.append(("renorm clipped_fraction", clipped))
    if probe:
        charts.append(
            ("train/inference gap (probe)", ["probe/gap", "probe/gap_max"])
        )
    prefix = re.escape(f"{name}/")
    return [
        layout_pb2.Chart(
            title=f"{name}: {title}",
            multiline=layout_pb2.MultilineChartContent(
                tag=[f"^{prefix}{re.escape(tag)}$" for tag in tags]
            ),
        )
        for title, tags in charts
    ]


def _layout_summary(layout):
    tensor = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(),
        string_val=[layout.SerializeToString()],
    )
    summary = summary_pb2.Summary()
    summary.value.add(
        tag=layout_metadata.CONFIG_SUMMARY_TAG,
        metadata=layout_metadata.create_summary_metadata(),
        tensor=tensor,
    )
    return summary


def _tag_names(layers):
    """A tag prefix per layer: its name, its path if names clash."""
    names = [layer.name for layer in layers]
    tags = [
        name if names.count(name) == 1 else getattr(layer, "path", name)
        for name, layer in zip(names, layers)
    ]
    unique = []
    for tag in tags:
        candidate, index = tag, 1
        while candidate in unique:
            index += 1
            candidate = f"{tag}_{index}"
        unique.append(candidate)
    return unique


class BatchNormMonitor(keras.callbacks.Callback):
    """Logs the health of every batch normalization layer to TensorBoard.

    For each batch normalization layer of the model (Keras's and
    bn-keras's, nested ones included, as `bn_keras.find_batchnorm` finds
    them), every epoch or every `update_freq` batches, this callback writes
    scalars under the tag prefix `<layer name>/`:

    - `moving_mean/drift`: L2 norm of the change of the moving mean since
      the previous write; `moving_mean/drift_from_start`: since this `fit`
      began; `moving_mean/drift_in_std`: mean over channels of
      `|change| / sqrt(moving_variance + epsilon)`, a scale-free figure.
    - `moving_variance/drift`, `moving_variance/drift_from_start`: the same
      norms for the moving variance; `moving_variance/drift_in_std`: mean
      over channels of `|change of log(moving_variance + epsilon)|`;
      `moving_variance/min` and `moving_variance/mean`.
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
    - Histograms `gamma/histogram`, `beta/histogram`,
      `moving_mean/histogram` and `moving_variance/histogram` (when
      `histograms=True`; skipped while the values are not all finite).
    - With `probe_data`: `probe/gap`, the mean over channels of
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

    It also writes `batchnorm/max_drift_in_std` (largest
    `moving_mean/drift_in_std` over layers), `batchnorm/min_moving_variance`,
    `batchnorm/nonfinite_layers` and, with `probe_data`,
    `batchnorm/max_probe_gap`; and, at the start of training, a
    custom-scalars layout (TensorBoard's "Custom Scalars" dashboard) with
    one category per layer, titled with its tag prefix.

    At every epoch end it adds to `logs`, for `EarlyStopping`, a tuner
    objective or `History`: `bn_max_drift_in_std` (largest
    `moving_mean/drift_in_std` over layers, over the epoch),
    `bn_min_moving_variance`, `bn_nonfinite_layers` and, with `probe_data`,
    `bn_max_probe_gap`. Callbacks placed after this one see them.

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
        log_dir,
        update_freq="epoch",
        histograms=True,
        probe_data=None,
        stop_on_nonfinite=False,
    ):
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

    def with_log_dir(self, log_dir):
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

    def _read(self):
        """`{tag prefix: read_statistics(layer)}` for every layer."""
        return {
            name: read_statistics(layer)
            for name, layer in zip(self._names, self._layers)
        }

    # -- training hooks --------------------------------------------------

    def on_train_begin(self, logs=None):
        model = self.model
        self._layers = find_batchnorm(model)
        self._names = _tag_names(self._layers)
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
        if not self._layers:
            warnings.warn(
                "BatchNormMonitor: the model has no batch normalization "
                "layer; nothing will be logged.",
                stacklevel=2,
            )
            return
        self._start = self._read()
        self._last = dict(self._start)
        self._epoch_start = dict(self._start)
        layout = layout_pb2.Layout(
            category=[
                layout_pb2.Category(
                    title=name,
                    chart=_layout_charts(
                        name, layer, self.probe_data is not None
                    ),
                )
                for name, layer in zip(self._names, self._layers)
            ]
        )
        self._writer.write(_layout_summary(layout), step=0)

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
        if not self._layers:
            return
        if self.update_freq == "epoch":
            states, probe = self._write(epoch)
        else:
            self._sync()
            states = self._read()
            probe = self._probe() if self.probe_data is not None else {}
            self._check_finite(states)
        drifts = []
        for name, layer in zip(self._names, self._layers):
            figures = _drift_figures(
                states[name],
                self._epoch_start[name],
                self._start[name],
                layer.epsilon,
            )
            drifts.append(figures["moving_mean/drift_in_std"])
        self._epoch_start = states
        if logs is not None:
            logs[LOG_MAX_DRIFT] = float(np.max(drifts))
            logs[LOG_MIN_VARIANCE] = float(
                np.min([s["moving_variance"].min() for s in states.values()])
            )
            logs[LOG_NONFINITE] = float(_count_nonfinite(states))
            if self.probe_data is not None:
                logs[LOG_MAX_PROBE_GAP] = _max_probe_gap(probe)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

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

    def _write(self, step):
        """Writes every figure at `step`; returns the states and probe."""
        self._sync()
        probe = self._probe() if self.probe_data is not None else {}
        snapshot = None
        if self._renorm_before is not None:
            begins, snapshot = self._renorm_before
            if begins != self._batch_begins:  # not the last batch's
                snapshot = None
            self._renorm_before = None
        summary = summary_pb2.Summary()

        def add(tag, value):
            summary.value.extend(scalar_pb(tag, np.float32(value)).value)

        states, drifts = {}, []
        for name, layer in zip(self._names, self._layers):
            now = read_statistics(layer)
            states[name] = now
            figures = _drift_figures(
                now, self._last[name], self._start[name], layer.epsilon
            )
            drifts.append(figures["moving_mean/drift_in_std"])
            figures.update(_affine_figures(now))
            if layer.renorm:
                figures.update(self._renorm_figures(name, layer, now, snapshot))
            figures.update(probe.get(name, {}))
            for key, value in figures.items():
                add(f"{name}/{key}", value)
            if self.histograms:
                for key in ("gamma", "beta", "moving_mean", "moving_variance"):
                    if key in now and np.all(np.isfinite(now[key])):
                        summary.value.extend(
                            histogram_pb(
                                f"{name}/{key}/histogram",
                                now[key],
                                buckets=HISTOGRAM_BUCKETS,
                            ).value
                        )
        self._last = states
        add(f"{RUN_NAME}/max_drift_in_std", np.max(drifts))
        add(
            f"{RUN_NAME}/min_moving_variance",
            np.min([s["moving_variance"].min() for s in states.values()]),
        )
        add(f"{RUN_NAME}/nonfinite_layers", _count_nonfinite(states))
        if self.probe_data is not None:
            add(f"{RUN_NAME}/max_probe_gap", _max_probe_gap(probe))
        self._writer.write(summary, step)
        self._check_finite(states)
        return states, probe

    def _renorm_figures(self, name, layer, now, snapshot):
        bounds = _clipping(layer)
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
            figures["renorm/clipped_fraction"] = _clipped_fraction(
                batch_mean,
                batch_stddev,
                old_mean,
                old_stddev,
                layer.epsilon,
                _clipping(layer, step),
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
        figures = {}
        for name, layer in zip(self._names, self._layers):
            if id(layer) not in first:
                continue
            inputs, mask = first[id(layer)]
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
            batch_rows, weights = channels_last_2d(layer, y_batch, mask)
            moving_rows, _ = channels_last_2d(layer, y_moving, mask)
            rms = np.sqrt(
                _weighted_mean(np.square(batch_rows - moving_rows), weights)
            )
            center = _weighted_mean(batch_rows, weights)
            std = np.sqrt(
                _weighted_mean(np.square(batch_rows - center), weights)
            )
            with np.errstate(invalid="ignore", divide="ignore"):
                gap = np.where(
                    std > 0, rms / std, np.where(rms > 0, np.inf, 0.0)
                )
            layer_figures = {
                "probe/gap": np.mean(gap),
                "probe/gap_max": np.max(gap),
            }
            if layer.renorm:
                mean, variance = _ghost_moments(layer, inputs, mask)
                layer_figures["probe/clipped_fraction"] = _clipped_fraction(
                    mean,
                    np.sqrt(variance + layer.epsilon),
                    as_float64(layer.renorm_mean),
                    as_float64(layer.renorm_stddev),
                    layer.epsilon,
                    _clipping(layer),
                )
            figures[name] = layer_figures
        return figures

    def _check_finite(self, states):
        """Warns once about each layer with non-finite statistics; stops
        training with `stop_on_nonfinite=True`."""
        stop = ""
        if self.stop_on_nonfinite:
            stop = " Stopping training (stop_on_nonfinite=True)."
        for name, bad in self._guard.check(states).items():
            warnings.warn(
                f"BatchNormMonitor: batch normalization layer '{name}' has "
                f"non-finite statistics ({', '.join(bad)} contain NaN or "
                "Inf). Its inference output is now wrong; look for a NaN or "
                f"Inf batch or a diverging loss.{stop}",
                RuntimeWarning,
                stacklevel=2,
            )


def _count_nonfinite(states):
    return sum(bool(nonfinite(now)) for now in states.values())


def _max_probe_gap(probe):
    gaps = [figures["probe/gap"] for figures in probe.values()]
    return float(np.max(gaps)) if gaps else float("nan")
