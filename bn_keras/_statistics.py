"""Reading, setting and checking the statistics of batch normalization
layers.

One reader, one setter and one non-finite scan for everything that looks at
or changes a trained layer: `BatchNormMonitor` (figures and warnings),
`bn-keras inspect` (its table and warnings), the tuner's guard against
non-finite trials, `bn_keras.recalibrate` and `bn_keras.convert_batchnorm`
(which set statistics). Works on Keras's layers and bn-keras's alike.
"""

import keras
import numpy as np

#: A channel with `|gamma|` below this is dead: it outputs `beta` whatever
#: its input.
DEAD_GAMMA = 1e-3


def to_numpy(variable):
    """A variable's (or tensor's) value as a NumPy array.

    Without NumPy 2's `DeprecationWarning` ("`__array__` implementation
    doesn't accept a copy keyword"): `keras.ops.convert_to_numpy` calls
    `np.array()` on a Keras variable (and on TensorFlow on its tensor),
    whose `__array__` takes no `copy` argument. The variable is read as a
    tensor first, which TensorFlow converts with `.numpy()`.
    """
    value = keras.ops.convert_to_tensor(variable)
    if hasattr(value, "numpy") and keras.backend.backend() == "tensorflow":
        return value.numpy()
    return keras.ops.convert_to_numpy(value)


def weight_values(layer):
    """`layer.get_weights()`, read with `to_numpy`."""
    return [to_numpy(variable) for variable in layer.weights]


def as_float64(variable):
    """A variable's (or tensor's) value as a float64 NumPy array."""
    return np.asarray(to_numpy(variable), dtype=np.float64)


def read_statistics(layer):
    """A batch normalization layer's statistics and affine weights.

    Returns a dict of float64 arrays: `moving_mean`, `moving_variance`,
    `gamma` (with `scale=True`), `beta` (with `center=True`) and, for a
    renorm layer, `moving_stddev`, `renorm_mean` and `renorm_stddev`. An
    empty dict for a layer that is not built (it has no weights yet).
    """
    if not layer.built:
        return {}
    names = ["moving_mean", "moving_variance"]
    if layer.scale:
        names.append("gamma")
    if layer.center:
        names.append("beta")
    if layer.renorm:
        names += ["moving_stddev", "renorm_mean", "renorm_stddev"]
    return {name: as_float64(getattr(layer, name)) for name in names}


def set_statistics(layer, mean, variance):
    """Sets a built layer's inference statistics to `mean` and `variance`.

    For a renorm layer, `moving_stddev` becomes `sqrt(variance + epsilon)`
    (as Keras keeps it), and `renorm_mean` and `renorm_stddev` the same
    statistics: renorm's correction `r`, `d` towards them then starts at
    the identity, so the unclipped training transform equals the inference
    transform. Gamma, beta and any step counter are left unchanged.

    Args:
        layer: A built batch normalization layer.
        mean: Array of shape `(channels,)`.
        variance: Array of shape `(channels,)`, the biased variance.
    """
    mean = np.asarray(mean, dtype=np.float32)
    variance = np.asarray(variance, dtype=np.float32)
    layer.moving_mean.assign(mean)
    layer.moving_variance.assign(variance)
    if layer.renorm:
        stddev = np.sqrt(variance + np.float32(layer.epsilon))
        layer.moving_stddev.assign(stddev)
        layer.renorm_mean.assign(mean)
        layer.renorm_stddev.assign(stddev)


def nonfinite(values):
    """`{name: number of NaN or infinite entries}` for the arrays of
    `values` (a dict of arrays) that hold any, in the order of `values`.

    >>> bn_keras._statistics.nonfinite(
    ...     {"gamma": np.ones(3), "beta": np.array([0.0, np.nan, np.inf])})
    {'beta': 2}
    """
    counts = {
        name: int(np.sum(~np.isfinite(value))) for name, value in values.items()
    }
    return {name: count for name, count in counts.items() if count}


def dead_channels(gamma):
    """Which channels are dead (`|gamma| < DEAD_GAMMA`): a boolean array."""
    return np.abs(gamma) < DEAD_GAMMA
