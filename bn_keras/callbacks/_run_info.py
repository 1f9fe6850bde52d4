"""What `BatchNormMonitor` writes about its run besides the BN figures.

The callbacks beside it (Keras's `TensorBoard`, whose epoch metrics and
histograms it then leaves to that callback), the objective the run is
ranked by, Keras's epoch metrics, the model-wide BN figures, and the
run's HParams: its hyperparameters (given, or described from the model's
BN layers) and the metrics of the experiment config.
"""

import collections
import inspect
import os

import keras
import numpy as np
from tensorboard.compat.proto import summary_pb2
from tensorboard.compat.proto import tensor_pb2
from tensorboard.compat.proto import tensor_shape_pb2
from tensorboard.compat.proto import types_pb2
from tensorboard.plugins.hparams import summary_v2
from tensorboard.plugins.scalar import metadata as scalar_metadata

from bn_keras._statistics import nonfinite
from bn_keras.callbacks._alerts import UNHEALTHY
from bn_keras.callbacks._figures import MEAN_DRIFT_IN_STD
from bn_keras.callbacks._figures import PROBE_GAP
from bn_keras.callbacks._hparams import NONE
from bn_keras.callbacks._hparams import epoch_metric
from bn_keras.callbacks._hparams import words
from bn_keras.callbacks._layout import MAX_DRIFT
from bn_keras.callbacks._layout import MAX_PROBE_GAP
from bn_keras.callbacks._layout import MIN_VARIANCE
from bn_keras.callbacks._layout import NONFINITE
from bn_keras.callbacks._layout import best_tag
from bn_keras.callbacks._text_summary import normalization_text
from bn_keras.models._placement import kind_of

#: What `tensorboard.plugins.scalar.summary_v2.scalar_pb` attaches to every
#: scalar; made once (scalar_pb makes it, and a tensor proto through NumPy,
#: for every value: a third of a write's time on a model of 52 BN layers).
_SCALAR_METADATA = scalar_metadata.create_summary_metadata(
    display_name=None, description=None
)

# The monitor's model-wide figures, in the order the dashboards show them:
# (tag, display name, needs `probe_data`).
# (tag, display name, needs `probe_data`); the first three come right
# after the figure a run is ranked by, among the five metrics TensorBoard
# shows: is the run's BN healthy?
_MONITOR_FIGURES = (
    (UNHEALTHY, "BN layers with an error or a warning", False),
    (MAX_PROBE_GAP, "BN max train/inference gap", True),
    (MAX_DRIFT, "BN max drift (std units)", False),
    (MIN_VARIANCE, "BN min moving variance", False),
    (NONFINITE, "BN non-finite layers", False),
)
_HEALTH = 3

#: How far up the stack `fit_callbacks` looks for Keras's `CallbackList`.
_STACK_DEPTH = 8


def scalar(tag, value):
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


def is_real(value):
    """Whether a `logs` entry is a number (a float or a scalar tensor)."""
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return np.ndim(value) == 0


# -- the callbacks beside the monitor ------------------------------------------


def fit_callbacks(callback):
    """The callbacks of the `fit` now calling `callback`'s `on_train_begin`.

    Keras gives a callback no handle on the others: they are read from the
    `keras.callbacks.CallbackList` that calls it, a few frames up the
    stack. `[]` when `callback` is called some other way.
    """
    frame = inspect.currentframe()
    try:
        for _ in range(_STACK_DEPTH):
            frame = frame.f_back
            if frame is None:
                return []
            owner = frame.f_locals.get("self")
            if isinstance(owner, keras.callbacks.CallbackList) and any(
                c is callback for c in owner.callbacks
            ):
                return list(owner.callbacks)
        return []
    finally:
        del frame


def _same_folder(a, b):
    a, b = os.fspath(a), os.fspath(b)
    if "://" in a or "://" in b:
        return a.rstrip("/") == b.rstrip("/")
    return os.path.abspath(a) == os.path.abspath(b)


def keras_tensorboard(callbacks, log_dir):
    """The `keras.callbacks.TensorBoard` among `callbacks` that writes to
    `log_dir` (its `train` and `validation` subfolders), or `None`."""
    for callback in callbacks:
        if isinstance(callback, keras.callbacks.TensorBoard) and _same_folder(
            callback.log_dir, log_dir
        ):
            return callback
    return None


# -- the objective -------------------------------------------------------------

#: The Keras log name a run is ranked by, and whether larger is better
#: (`"max"`) or smaller (`"min"`).
Objective = collections.namedtuple("Objective", ["name", "direction"])


#: Words of the Keras log names of which smaller is better.
_SMALLER_IS_BETTER = (
    "loss",
    "error",
    "mae",
    "mse",
    "crossentropy",
    "hinge",
    "divergence",
)


def check_objective(objective):
    """An `Objective` from a Keras log name (`"val_accuracy"`; smaller is
    better for losses and errors, such as `"val_loss"` or `"val_mae"`,
    larger otherwise) or an object with `name` and `direction`
    (`keras_tuner.Objective`)."""
    if objective is None:
        return None
    if isinstance(objective, str):
        name, direction = objective, None
    else:
        name = getattr(objective, "name", None)
        direction = getattr(objective, "direction", None)
    if isinstance(name, str) and direction is None:
        smaller = any(word in name for word in _SMALLER_IS_BETTER)
        direction = "min" if smaller else "max"
    if not isinstance(name, str) or not name or direction not in ("min", "max"):
        raise TypeError(
            "Argument `objective` must be a Keras log name such as "
            "'val_accuracy', or an object with `name` and `direction` ('min' "
            f"or 'max'), such as keras_tuner.Objective. Received: "
            f"objective={objective!r}"
        )
    return Objective(name, direction)


def better(objective, value, best):
    """Whether `value` beats `best` (`None`: nothing yet); NaN never does."""
    if not np.isfinite(value):
        return False
    if best is None:
        return True
    return value > best if objective.direction == "max" else value < best


# -- epoch figures -------------------------------------------------------------


def accuracy_names(model):
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


def model_figures(figures, states):
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


# -- HParams -------------------------------------------------------------------


def _common(values):
    """The one value of `values`, `"mixed"` if they differ, `NONE` if
    there are none."""
    distinct = list(dict.fromkeys(values))
    if not distinct:
        return NONE
    return distinct[0] if len(distinct) == 1 else "mixed"


def _position(placement):
    text = placement[1] if placement else ""
    for where in ("before act", "after act"):
        if text.endswith(f"({where})"):
            return where
    return "next to no activation"


def described_hparams(tagged, placements):
    """The HParams of a model's BN, for a `fit` given none: where BN sits
    relative to the activations, its kind (`plain`, `ghost(16)`,
    `renorm`), its momentum and how many layers have it, then each layer
    (by tag) with its placement and settings. All strings but the count,
    so that sessions of other models have the same types.

    Args:
        tagged: `[(tag, layer)]` in forward order.
        placements: `{id(layer): (path, text)}` (`placements(model)`).
    """
    layers = [layer for _, layer in tagged]
    values = {
        "placement": _common(
            _position(placements.get(id(layer))) for layer in layers
        ),
        "normalization": _common(kind_of(layer) for layer in layers),
        "momentum": _common(
            f"{getattr(layer, 'momentum', None)}" for layer in layers
        ),
        "BN layers": len(layers),
    }
    for tag, layer in tagged:
        placement = placements.get(id(layer))
        where = placement[1] if placement else "?"
        values[tag] = f"{where}; {normalization_text(layer)}"
    return values


def run_metrics(objective, accuracies, keras_logs, probe):
    """The metrics of the experiment config, in the order shown: the best
    value of the objective and its final value (without an objective: the
    validation accuracies and loss), how many BN layers have an error or a
    warning, the largest gap and drift (TensorBoard shows the first five),
    the other validation metrics, the other model-wide BN figures, then
    the training metrics.

    Args:
        objective: An `Objective`, or `None`.
        accuracies: The model's accuracy metrics (`accuracy_names`).
        keras_logs: Whether `keras.callbacks.TensorBoard` writes the epoch
            metrics (in its subfolders) rather than the monitor.
        probe: Whether the monitor has `probe_data`.
    """
    first, finals = [], [f"val_{name}" for name in accuracies] + ["val_loss"]
    if objective is not None:
        name = objective.name
        first.append(
            summary_v2.Metric(
                best_tag(name), display_name=f"best {words(name)}"
            )
        )
        first.append(epoch_metric(name, keras_logs, f"final {words(name)}"))
        finals = [n for n in finals if n != name]
    else:
        first += [epoch_metric(name, keras_logs) for name in finals]
        finals = []
    figures = [
        summary_v2.Metric(tag, display_name=display_name)
        for tag, display_name, needs_probe in _MONITOR_FIGURES
        if probe or not needs_probe
    ]
    health = _HEALTH if probe else _HEALTH - 1
    ranked = None if objective is None else objective.name
    training = [n for n in [*accuracies, "loss"] if n != ranked]
    return [
        *first,
        *figures[:health],
        *[epoch_metric(name, keras_logs) for name in finals],
        *figures[health:],
        *[epoch_metric(name, keras_logs) for name in training],
    ]
