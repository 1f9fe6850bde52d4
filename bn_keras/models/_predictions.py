"""Comparing a model's predictions: with each other and with targets.

Shared by `bn_keras.models.train_inference_gap` and `bn_keras.diagnose`.
Only a model's first output is compared (the first leaf of a list or dict
of outputs). What a prediction is depends on that output:

- `"classes"`: a last axis of more than one unit; the class is its argmax
  (logits or probabilities alike). Targets are class ids or one-hot rows.
- `"binary"`: one unit with targets that are all 0 or 1, or, without
  targets, outputs that all lie in [0, 1]; the class is whether it is
  above 0.5 (probabilities: every output in [0, 1]) or above 0 (logits).
- `"values"`: anything else (regression); predictions are compared by
  their relative change and targets by the mean squared error.
"""

import keras
import numpy as np

#: The metric of each kind of prediction, and whether higher is better.
METRICS = {
    "classes": ("accuracy", True),
    "binary": ("accuracy", True),
    "values": ("mean squared error", False),
}


def first_output(outputs):
    """The first output of a batch's outputs, as a NumPy array."""
    leaf = keras.tree.flatten(outputs)[0]
    return np.asarray(keras.ops.convert_to_numpy(leaf))


def concatenate(batches):
    """The first outputs (or targets) of a list of batches, concatenated;
    `None` if any batch has none."""
    if not batches or any(b is None for b in batches):
        return None
    return np.concatenate([first_output(b) for b in batches])


def prediction_kind(outputs, targets=None):
    """`"classes"`, `"binary"` or `"values"` (see the module docstring)."""
    if outputs.ndim >= 2 and outputs.shape[-1] > 1:
        return "classes"
    if outputs.ndim >= 1 and outputs.size:
        if targets is not None:
            values = np.unique(np.asarray(targets, dtype=np.float64))
            if np.all(np.isin(values, (0.0, 1.0))):
                return "binary"
            return "values"
        if classes_are_probabilities(outputs):
            return "binary"
    return "values"


def classes_are_probabilities(outputs):
    """Whether single-unit outputs look like probabilities (all in
    [0, 1]) rather than logits."""
    return bool(np.all((outputs >= 0) & (outputs <= 1)))


def classes(outputs, kind, probabilities=None):
    """The predicted class of every sample (`"classes"` or `"binary"`).

    For `"binary"`, the threshold is 0.5 for probabilities and 0 for
    logits; `probabilities` says which (default: whether every output lies
    in [0, 1]).
    """
    if kind == "classes":
        return np.argmax(outputs, axis=-1).reshape(len(outputs), -1)
    if probabilities is None:
        probabilities = classes_are_probabilities(outputs)
    threshold = 0.5 if probabilities else 0.0
    return (outputs > threshold).reshape(len(outputs), -1)


def _target_classes(targets, outputs, kind):
    targets = np.asarray(targets)
    if kind == "classes" and targets.shape == outputs.shape:
        return np.argmax(targets, axis=-1).reshape(len(targets), -1)
    return targets.reshape(len(targets), -1).astype(np.int64)


def changed_share(before, after, kind, probabilities=None):
    """The share of samples whose predicted class differs (`"classes"`,
    `"binary"`), or the relative change `rms(after - before) /
    std(before)` (`"values"`)."""
    if kind == "values":
        scale = np.std(before)
        change = np.sqrt(np.mean(np.square(after - before)))
        return float(change / scale) if scale > 0 else float(change > 0)
    a = classes(before, kind, probabilities)
    b = classes(after, kind, probabilities)
    return float(np.mean(np.any(a != b, axis=-1)))


def metric(outputs, targets, kind, probabilities=None):
    """Accuracy (`"classes"`, `"binary"`) or mean squared error
    (`"values"`) of `outputs` against `targets`."""
    if kind == "values":
        targets = np.asarray(targets, dtype=np.float64).reshape(outputs.shape)
        return float(np.mean(np.square(outputs - targets)))
    predicted = classes(outputs, kind, probabilities)
    expected = _target_classes(targets, outputs, kind)
    return float(np.mean(np.all(predicted == expected, axis=-1)))
