"""The formulas that `BatchNormalization` computes and `BatchNormMonitor`
re-derives from the layer's weights, written once for both.

The layer calls them on backend tensors (in its compute dtype, float32); the
monitor on NumPy arrays, in float64 so that its figures stay exact. The
renorm and moving-average formulas use only arithmetic operators and, where
needed, the namespace of their inputs (NumPy for NumPy arrays, `keras.ops`
otherwise), so that NumPy values stay NumPy values: no backend, and no
TensorFlow import on the JAX or torch backends.
"""

import numpy as np
from keras import ops


def _namespace(value):
    """NumPy for NumPy values, `keras.ops` for backend tensors."""
    return np if isinstance(value, (np.ndarray, np.generic)) else ops


# -- ghost batches ------------------------------------------------------------


def ghost_count(batch, size):
    """How many ghost batches of `size` a batch of `batch` samples makes.

    Consecutive chunks of `size`; a last chunk of one sample joins the chunk
    before it: `G = max(1, (B - 2) // size + 1)`. `batch` is an integer or a
    scalar tensor.

    >>> bn_keras.layers._formulas.ghost_count(10, 4)
    3
    >>> bn_keras.layers._formulas.ghost_count(9, 4)
    2
    """
    if isinstance(batch, int):
        return max(1, (batch - 2) // size + 1)
    return ops.maximum((batch - 2) // size + 1, 1)


def ghost_ids(batch, size):
    """The ghost batch of each sample, and the number of ghost batches.

    Sample `i` belongs to ghost batch `min(i // size, G - 1)`, with `G` from
    `ghost_count`. Returns `(ids, G)`: `ids` an integer tensor of shape
    `(batch,)`.

    >>> ids, count = bn_keras.layers._formulas.ghost_ids(9, 4)
    >>> keras.ops.convert_to_numpy(ids).tolist(), count
    ([0, 0, 0, 0, 1, 1, 1, 1, 1], 2)
    """
    count = ghost_count(batch, size)
    return ops.minimum(ops.arange(batch) // size, count - 1), count


# -- batch renormalization ----------------------------------------------------


def renorm_ratios(mean, stddev, renorm_mean, renorm_stddev, epsilon):
    """Renorm's `r` and `d`, before clipping.

    `r = stddev / sigma` and `d = (mean - renorm_mean) / sigma`, where
    `mean` and `stddev` are the batch's (or each ghost batch's) statistics
    and `sigma` is `renorm_stddev` floored at `sqrt(epsilon)` (Keras's guard
    against dividing by zero early in training). NumPy arrays in, NumPy
    arrays out; tensors in, tensors out (of `stddev`'s dtype).
    """
    xp = _namespace(stddev)
    if xp is np:
        floor = np.sqrt(np.asarray(epsilon, dtype=stddev.dtype))
    else:
        floor = ops.sqrt(ops.cast(epsilon, stddev.dtype))
    sigma = xp.maximum(renorm_stddev, floor)
    return stddev / sigma, (mean - renorm_mean) / sigma


def clip_renorm(r, d, clipping):
    """`r` clipped to `[rmin, rmax]` and `d` to `[-dmax, dmax]`.

    `clipping` is a dict with optional keys `"rmin"`, `"rmax"` and
    `"dmax"`; a missing (or `None`) bound does not clip.
    """
    xp = _namespace(r)
    cast = (lambda v: v) if xp is np else (lambda v: ops.cast(v, r.dtype))
    if clipping.get("rmin") is not None:
        r = xp.maximum(r, cast(clipping["rmin"]))
    if clipping.get("rmax") is not None:
        r = xp.minimum(r, cast(clipping["rmax"]))
    if clipping.get("dmax") is not None:
        dmax = cast(clipping["dmax"])
        d = xp.clip(d, -dmax, dmax)
    return r, d


def renorm_clipped(r, d, clipping):
    """Where `clip_renorm` changes `r` or `d`: a boolean array.

    A NaN is not clipped (it compares false with every bound).
    """
    xp = _namespace(r)
    clipped = xp.zeros_like(r, dtype="bool")
    if clipping.get("rmin") is not None:
        clipped = clipped | (r < clipping["rmin"])
    if clipping.get("rmax") is not None:
        clipped = clipped | (r > clipping["rmax"])
    if clipping.get("dmax") is not None:
        clipped = clipped | (abs(d) > clipping["dmax"])
    return clipped


# -- moving averages ----------------------------------------------------------


def moving_average(old, value, momentum):
    """The moving statistic after a batch: `old * m + value * (1 - m)`.

    Keras's update, for the moving and the renorm statistics alike.
    """
    return old * momentum + value * (1.0 - momentum)


def moving_average_input(old, new, momentum):
    """The batch value that moved a statistic from `old` to `new`.

    The inverse of `moving_average`: `(new - m * old) / (1 - m)`. Exact up
    to the rounding of the stored values (float32 weights: a relative error
    about `1e-7 / (1 - m)`).
    """
    return (new - momentum * old) / (1 - momentum)


def cumulative_average(old_mean, old_variance, mean, variance, count):
    """The mean and variance of all the batches seen, after one more.

    The update of `momentum=None` (Chan et al.'s merge of two groups'
    moments, each batch weighing one): with `count` the number of batches
    including this one, `delta = mean - old_mean`,

        new_mean = old_mean + delta / count
        new_variance = old_variance + (variance - old_variance) / count
                       + (count - 1) / count**2 * delta**2

    After `n` batches the statistics are `mean(mu_i)` and
    `mean(var_i + (mu_i - new_mean)**2)`: for batches of equal size, the
    mean and (biased) variance of every value seen. At `count = 1` they are
    the batch's, whatever `old_mean` and `old_variance` were. Returns
    `(new_mean, new_variance)`.
    """
    delta = mean - old_mean
    new_mean = old_mean + delta / count
    new_variance = (
        old_variance
        + (variance - old_variance) / count
        + (count - 1.0) / (count * count) * (delta * delta)
    )
    return new_mean, new_variance


def cumulative_average_input(
    old_mean, old_variance, new_mean, new_variance, count
):
    """The batch mean and variance that moved the cumulative statistics.

    The inverse of `cumulative_average`, with the same `count` (batches
    including this one). Float32 weights make the recovered values lose
    precision as `count` grows: an absolute error about
    `count * 1e-7 * |new_mean|` on the mean.
    """
    mean = old_mean + count * (new_mean - old_mean)
    delta = mean - old_mean
    variance = (
        old_variance
        + count * (new_variance - old_variance)
        - (count - 1.0) / count * (delta * delta)
    )
    return mean, variance


def renorm_update_input(
    old_mean, old_stddev, new_mean, new_stddev, epsilon, momentum, count=None
):
    """The batch mean and standard deviation that moved renorm statistics.

    NumPy arrays: the renorm (or moving) mean and `sqrt(variance +
    epsilon)` before and after a batch's update. With a float `momentum`,
    `moving_average_input` of each; with `None`, `cumulative_average_input`
    of the mean and variance, `count` being the number of updates applied,
    this one included. Returns `(mean, stddev)`.
    """
    if momentum is not None:
        return (
            moving_average_input(old_mean, new_mean, momentum),
            moving_average_input(old_stddev, new_stddev, momentum),
        )
    mean, variance = cumulative_average_input(
        old_mean,
        np.maximum(old_stddev * old_stddev - epsilon, 0.0),
        new_mean,
        np.maximum(new_stddev * new_stddev - epsilon, 0.0),
        count,
    )
    return mean, np.sqrt(np.maximum(variance, 0.0) + epsilon)
