"""The figures `BatchNormMonitor` writes for one batch normalization layer.

Computed in float64 from the layer's statistics (`read_statistics`), for
renorm's clipping from its statistics just before the last batch, and,
for the probe figures, from what the layer receives and outputs on the
probe batch. Channels that are constant on the data a figure is measured
on are counted and left out of the figures they would make infinite or
alarming (`decayed_as_constant`, `constant_in_batches`).
"""

import collections

import keras
import numpy as np

from bn_keras._statistics import as_float64
from bn_keras._statistics import dead_channels
from bn_keras.layers._formulas import ghost_ids
from bn_keras.layers._formulas import moving_average_input
from bn_keras.layers._formulas import renorm_clipped
from bn_keras.layers._formulas import renorm_ratios
from bn_keras.layers._formulas import renorm_update_input
from bn_keras.models._tracing import PooledMoments
from bn_keras.models._tracing import channels_last_2d

#: The two figures that matter most; their names sort first in a layer's
#: group of TensorBoard's Time Series dashboard.
PROBE_GAP = "1_probe_gap"
MEAN_DRIFT_IN_STD = "2_mean_drift_in_std"

#: float32's unit roundoff, and its smallest normal number: the moving
#: statistics are float32 weights.
UNIT_ROUNDOFF = 2.0**-24
FLOAT32_TINY = float(np.finfo(np.float32).tiny)


# -- moving statistics ---------------------------------------------------------


def constant_batches(before, after, momentum, steps, floor=0.0):
    """Which channels of a moving statistic saw only constant batches.

    A moving statistic goes from `before` to `after` in `steps` updates
    `s * m + b * (1 - m)`, where `b` is the batch's statistic and `m` the
    momentum. Inverting them (`moving_average_input` with momentum
    `m ** steps`) recovers the weighted mean of the `steps` batch values,
    exactly but for the rounding of float32 weights. A channel whose input
    is constant on a batch has `b = floor` (the variance 0, renorm's
    `sqrt(variance + epsilon)` the square root of epsilon), its smallest
    value, so the mean is `floor` only if every batch was constant. A
    channel counts as constant when the mean is within the rounding bound
    of `floor`: `4 * steps` unit roundoffs of `|after| + m ** steps *
    |before|` (each update rounds the momentum, a product and a sum), plus
    `steps` times float32's smallest normal number for values that
    underflow, over `1 - m ** steps`, plus 4 unit roundoffs of `floor`.

    Returns a boolean array; all `False` when there is nothing to tell
    (no step, or a momentum that is not a number below 1).
    """
    constant = np.zeros(np.shape(after), dtype=bool)
    if steps < 1 or not isinstance(momentum, float):
        return constant
    decay = momentum**steps
    if not 0.0 <= decay < 1.0:
        return constant
    batch_mean = moving_average_input(before, after, decay)
    rounding = steps * (
        4 * UNIT_ROUNDOFF * (np.abs(after) + decay * np.abs(before))
        + FLOAT32_TINY
    )
    bound = rounding / (1.0 - decay) + 4 * UNIT_ROUNDOFF * floor
    with np.errstate(invalid="ignore"):
        return np.abs(batch_mean - floor) <= bound


def constant_channels(layer, now, before, steps):
    """Which channels' input was constant on every training batch of the
    `steps` between the statistics `before` and `now` of `layer`.

    Read from the moving variance, or, for renorm layers (whose moving
    variance derives from `moving_stddev`, the moving average of
    `sqrt(variance + epsilon)`), from the moving standard deviation.
    """
    if "moving_stddev" in now:
        epsilon = np.float64(np.float32(layer.epsilon))
        return constant_batches(
            before["moving_stddev"],
            now["moving_stddev"],
            layer.momentum,
            steps,
            floor=np.sqrt(epsilon),
        )
    return constant_batches(
        before["moving_variance"], now["moving_variance"], layer.momentum, steps
    )


#: The training batches' statistics since an earlier reading, recovered
#: from the moving statistics (`window_statistics`): the layer's moving
#: mean and variance now, the batches' mean and variance (weighted as the
#: moving average weighs them, the latest most), the channels to compare
#: (finite, not constant on those batches), and the training steps.
Window = collections.namedtuple(
    "Window",
    ["moving_mean", "moving_variance", "mean", "variance", "kept", "steps"],
)


def window_statistics(layer, now, before, steps):
    """The mean and variance of the training batches of the `steps` steps
    between the statistics `before` and `now` of `layer` (a `Window`), or
    `None` when they cannot be recovered: no step, a layer that does not
    train, a momentum that is not a number below 1 (cumulative averages),
    statistics that did not exist yet.

    Over `k` steps of momentum `m` the moving statistic goes from `before`
    to `now = m**k * before + (1 - m**k) * w`, where `w` is the mean of
    the batches' statistics weighted by `m**j` (`j` steps before the
    last); `moving_average_input` with momentum `m**k` recovers `w`
    exactly but for the rounding of float32 weights. For renorm layers,
    whose moving variance derives from `moving_stddev` (the moving average
    of `sqrt(variance + epsilon)`), the batches' variance is `w**2 -
    epsilon` of that average.
    """
    momentum = layer.momentum
    if steps < 1 or not layer.trainable or not isinstance(momentum, float):
        return None
    if "moving_mean" not in before or "moving_mean" not in now:
        return None  # a layer built during the window
    decay = momentum**steps
    if not 0.0 <= decay < 1.0:
        return None
    mean = moving_average_input(
        before["moving_mean"], now["moving_mean"], decay
    )
    epsilon = np.float64(np.float32(layer.epsilon))
    if "moving_stddev" in now:
        stddev = moving_average_input(
            before["moving_stddev"], now["moving_stddev"], decay
        )
        variance = np.maximum(np.square(stddev) - epsilon, 0.0)
        moving_variance = np.maximum(
            np.square(now["moving_stddev"]) - epsilon, 0.0
        )
    else:
        variance = moving_average_input(
            before["moving_variance"], now["moving_variance"], decay
        )
        moving_variance = now["moving_variance"]
    kept = ~constant_channels(layer, now, before, steps)
    with np.errstate(invalid="ignore"):
        kept &= np.isfinite(mean) & np.isfinite(variance) & (variance >= 0)
    return Window(
        now["moving_mean"], moving_variance, mean, variance, kept, steps
    )


def drift_figures(now, previous, start, epsilon, constant):
    """Drift of the moving statistics since `previous` and `start`, and the
    moving variance's figures with the `constant` channels left out of its
    minimum (left out altogether if every channel is constant)."""
    mean, variance = now["moving_mean"], now["moving_variance"]
    change = mean - previous["moving_mean"]
    with np.errstate(invalid="ignore", divide="ignore"):
        log_change = np.log(variance + epsilon) - np.log(
            previous["moving_variance"] + epsilon
        )
        mean_in_std = np.abs(change) / np.sqrt(variance + epsilon)
    figures = {
        MEAN_DRIFT_IN_STD: np.mean(mean_in_std),
        "moving_mean/drift": np.linalg.norm(change),
        "moving_mean/drift_from_start": np.linalg.norm(
            mean - start["moving_mean"]
        ),
        "moving_variance/drift": np.linalg.norm(
            variance - previous["moving_variance"]
        ),
        "moving_variance/drift_from_start": np.linalg.norm(
            variance - start["moving_variance"]
        ),
        "moving_variance/drift_in_std": np.mean(np.abs(log_change)),
        "moving_variance/mean": np.mean(variance),
        "moving_variance/max": np.max(variance),
        "moving_variance/constant_channels": np.sum(constant),
    }
    if not np.all(constant):
        figures["moving_variance/min"] = np.min(variance[~constant])
    return figures


def affine_figures(now):
    """Mean, std, min and max of gamma and beta; gamma's dead fraction."""
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


# -- renorm --------------------------------------------------------------------


def clipping(layer, step=None):
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


def clipped_fraction(mean, stddev, renorm_mean, renorm_stddev, epsilon, bounds):
    """Fraction of r and d pairs that the bounds clip.

    `mean` and `stddev` are the batch (or per-ghost, shape `(G, C)`)
    statistics, `renorm_*` the renorm statistics before the batch; r and d
    are the layer's (Keras's) formulas, computed in float64.
    """
    r, d = renorm_ratios(mean, stddev, renorm_mean, renorm_stddev, epsilon)
    return float(np.mean(renorm_clipped(r, d, bounds)))


def renorm_figures(layer, now, before):
    """A renorm layer's bounds in force and, with `before` (its
    `(renorm_mean, renorm_stddev)` from just before the last training
    batch), the fraction of channels whose `r` or `d` that batch clipped.

    The batch's mean and standard deviation are recovered exactly (to
    float32 rounding) from its update of the renorm statistics, `now`.
    """
    bounds = clipping(layer)
    figures = {
        f"renorm/{k}": bounds[k] for k in ("rmax", "dmax") if k in bounds
    }
    # With `renorm_momentum=1.0` the renorm statistics never move: the
    # batch's cannot be recovered from their (absent) update.
    if (
        before is not None
        and layer.trainable
        and getattr(layer, "renorm_momentum", None) != 1.0
    ):
        old_mean, old_stddev = before
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


# -- the probe batch -----------------------------------------------------------


def ghost_of_rows(layer, batch, num_rows):
    """The ghost batch of each of `num_rows` rows of channels that a batch
    of `batch` samples makes (all 0 without ghost batches)."""
    size = getattr(layer, "virtual_batch_size", None)
    if size is None:
        ghost_of_sample = np.zeros(batch, dtype=int)
    else:
        ids, _ = ghost_ids(batch, size)
        ghost_of_sample = keras.ops.convert_to_numpy(ids)
    return np.repeat(ghost_of_sample, num_rows // batch)


def ghost_moments(rows, weights, ghost_of_row):
    """Mean and variance of each ghost batch's rows: arrays `(G, C)`."""
    means, variances = [], []
    for ghost in range(ghost_of_row.max() + 1):
        pooled = PooledMoments()
        selected = ghost_of_row == ghost
        pooled.add(
            rows[selected], None if weights is None else weights[selected]
        )
        means.append(pooled.mean)
        variances.append(pooled.variance)
    return np.stack(means), np.stack(variances)


def constant_in_batches(rows, weights, ghost_of_row):
    """Which channels hold one value in every row (of positive weight) of
    each batch the layer normalizes over: the probe batch, or each of its
    ghost batches. Exact: the largest and smallest values are equal."""
    constant = np.ones(rows.shape[1], dtype=bool)
    counted = np.ones(len(rows), dtype=bool) if weights is None else weights > 0
    for ghost in np.unique(ghost_of_row):
        selected = rows[(ghost_of_row == ghost) & counted]
        if len(selected):
            constant &= selected.max(axis=0) == selected.min(axis=0)
    return constant


def _weighted_mean(values, weights):
    if weights is None:
        return values.mean(axis=0)
    return (weights[:, None] * values).sum(axis=0) / weights.sum()


def channel_gaps(batch_rows, moving_rows, weights):
    """`rms(y_batch - y_moving) / std(y_batch)` per channel.

    A channel that is not constant has `std(y_batch) > 0` unless its gamma
    is 0, when both transforms output beta: its gap is then 0. NaN
    statistics give a NaN gap, as they should.
    """
    rms = np.sqrt(_weighted_mean(np.square(batch_rows - moving_rows), weights))
    center = _weighted_mean(batch_rows, weights)
    std = np.sqrt(_weighted_mean(np.square(batch_rows - center), weights))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(std > 0, rms / std, np.where(rms == 0, 0.0, np.nan))


def probe_gap(gap, constant):
    """The probe figures of the channels' gaps (`channel_gaps`), the
    `constant` channels left out: `{PROBE_GAP: mean, "probe/gap_max": max,
    "probe/constant_channels": count}`, without the first two when every
    channel is constant."""
    figures = {"probe/constant_channels": np.sum(constant)}
    kept = gap[~constant]
    if kept.size:
        figures[PROBE_GAP] = np.mean(kept)
        figures["probe/gap_max"] = np.max(kept)
    return figures


#: What the alerts need of a layer's probe besides its written figures:
#: the values per channel and samples of the smallest batch it normalizes
#: on the probe (the probe batch, or its smallest ghost batch), whether
#: those are ghost batches, and the median over channels of the gap
#: (constant channels left out; NaN if all are).
ProbeBatch = collections.namedtuple(
    "ProbeBatch", ["rows", "samples", "ghost", "median_gap"]
)


def probe_batch(layer, batch, weights, ghost_of_row, gap):
    """The `ProbeBatch` of `layer` on a probe of `batch` samples: its rows'
    `weights` (`None`: all count) and ghost batches, and the channels'
    `gap` with the constant channels left out."""
    counted = np.ones(len(ghost_of_row)) if weights is None else weights > 0
    ghosts = np.unique(ghost_of_row)
    values = min(int(np.sum(counted[ghost_of_row == g])) for g in ghosts)
    gap = gap[np.isfinite(gap)]
    return ProbeBatch(
        values,
        batch // len(ghosts),
        getattr(layer, "virtual_batch_size", None) is not None,
        float(np.median(gap)) if gap.size else float("nan"),
    )


def probe_layer_figures(layer, inputs, mask):
    """The probe figures of `layer` on `inputs` (what it receives when the
    model runs the probe batch in inference mode): its train/inference
    gap and constant channels, and for renorm its clipping. Returns them
    with its `ProbeBatch`: `(figures, probe_batch)`."""
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
    batch = int(inputs.shape[0])
    ghosts = ghost_of_rows(layer, batch, len(rows))
    batch_rows, _ = channels_last_2d(layer, y_batch, mask)
    moving_rows, _ = channels_last_2d(layer, y_moving, mask)
    gap = channel_gaps(batch_rows, moving_rows, weights)
    constant = constant_in_batches(rows, weights, ghosts)
    figures = probe_gap(gap, constant)
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
    kept = np.where(constant, np.nan, gap)
    return figures, probe_batch(layer, batch, weights, ghosts, kept)
