"""The detectors: measured numbers in, `Finding`s out.

Pure functions of NumPy arrays and plain figures, so that whoever measures
can use them: `bn_keras.diagnose` (a saved model against data) and
`BatchNormMonitor` (during training). Each returns a `Finding` with its
message, evidence and remedy, or `None` when there is nothing to report;
the words live here, once. This module holds the thresholds, the shared
words (`names`, `share`, `figure`, the remedies) and the detectors of what
is measured on a model and data; `_training_detectors` holds those of what
only the monitor sees during training (the probe gap, statistics lagging
behind the batches, renorm's clipping over time, constant channels). The
inputs:

- `statistics_mismatch(distances, impact)`: `distances`, a list in forward
  order of `(layer, figures)` with `figures =
  statistics_distance(moving_mean, moving_variance, mean, variance,
  epsilon)`, where `mean` and `variance` are the layer's input statistics
  on the data; `impact`, see `impact()`: what precise statistics change in
  the predictions.
- `input_scale(first_layers)` and `preprocessing_mismatch(scale, impact)`:
  `first_layers`, `(layer, moving_mean, moving_variance, variance)` of the
  layers with no batch normalization before them.
- `noisy_batch_statistics(batch_size, disagreement, spreads, metrics)`:
  the share of samples predicted differently in training mode at
  `batch_size` and in inference, the between-batch spread of each layer's
  batch means (`batch_mean_spread`), and optionally both modes' metric.
- `nonfinite_statistics(counts)`: `{layer: {"moving_mean": n, ...}}`, the
  non-finite entries found (`bn_keras._statistics.nonfinite`).
- `collapsed_variance(layers, impact)`: `{layer: (moving_variance, varies,
  epsilon)}`, `varies` telling which channels' inputs vary (variance above
  epsilon); without `impact` (the monitor) it is a note.
- `dead_channels(layers)`: `{layer: (dead, channels)}` from gamma
  (`bn_keras._statistics.dead_channels`).
- `dropout_before_batchnorm(pairs)`, `bias_before_batchnorm(pairs)`,
  `batchnorm_before_output(layers)`: layer names read from the graph.

Every threshold is a named constant below, with where it comes from.
"""

import numpy as np

from bn_keras.diagnosis.finding import Finding

# -- thresholds ---------------------------------------------------------------

#: Recalibrating a model whose statistics are already precise, on held-out
#: data, changed under 1.5% of its predictions (small CNNs on scikit-learn's
#: digits): the noise of recalibration itself. A warning needs twice that.
WARNING_CHANGED_SHARE = 0.03
#: A quarter of the predictions changing means they follow the statistics
#: more than the input; the models with stale statistics measured changed
#: 60-90% of their predictions.
ERROR_CHANGED_SHARE = 0.25
#: With labels: an accuracy gain from precise statistics of at least one
#: point is beyond the noise (a model trained 25 epochs still gained 3.5
#: points); ten points means the predictions as they are are wrong.
WARNING_ACCURACY_GAIN = 0.01
ERROR_ACCURACY_GAIN = 0.10
#: The same for a loss-like metric (lower is better), relative to its value.
WARNING_RELATIVE_GAIN = 0.05
ERROR_RELATIVE_GAIN = 0.5
#: A layer's statistics are called off when a channel's mean is this many
#: of the data's standard deviations away, or its variance this factor off.
#: The monitor, which has no measured impact to weigh a single channel by,
#: asks it of a layer's median channel (`lagging_statistics`).
MEAN_DISTANCE = 0.5
VARIANCE_FACTOR = 2.0
#: How many layers a message names (the evidence lists more).
NAMED_LAYERS = 3
EVIDENCE_LAYERS = 10
#: Inputs on another scale: the first layers' data standard deviation is
#: at least this factor from the moving one's, and at least this share of
#: channels lies within a factor of 2 of that (a model whose statistics are
#: merely stale has a different factor in every channel).
SCALE_FACTOR = 4.0
SCALE_CONSISTENT_SHARE = 0.8
#: Inputs rescaled by that factor must predict as precise statistics do on
#: all but this share of samples for the scale to explain the mismatch
#: (without targets; with targets, the metric must improve).
SCALE_SUPPORT_CHANGED_SHARE = 0.1
#: Training mode at the training batch size against inference: healthy
#: models at batch 32 disagreed on under 1% of samples, a model trained
#: at batch 2 on a quarter.
WARNING_DISAGREEMENT = 0.05
ERROR_DISAGREEMENT = 0.25
#: Renorm: r or d clipped on at least this fraction of channels, in each of
#: this many successive writes of the monitor: a correction that is never
#: in use. A renorm run of `make demo` that trained as plain batch
#: normalization had 1.0 at every write; the 12 renorm runs of `bn-keras
#: compare --dataset digits` (CNN and MLP, 12 epochs; 2026-12-07) had at
#: most 4 writes in a row at 0.9 or more, the first in the warm-up of
#: their schedule (bounds without room, which count only when they stay).
SATURATED_FRACTION = 0.9
SATURATED_WRITES = 5
#: The monitor's probe gap (`rms(y_batch - y_moving) / std(y_batch)`, of
#: a layer's median channel): with precise statistics it is about
#: `sqrt(1.5 / rows)` from batch noise alone (`rows` values per channel in
#: a batch: the batch mean's error has a variance of `1 / rows`, the batch
#: standard deviation's about `1 / (2 rows)`, in units of the channel's).
#: A gap of half the output's spread, and three times that noise, is a
#: mismatch; batch noise alone of at least half the spread (6 values per
#: channel or fewer) is noisy batch statistics. With the lag thresholds
#: above, on `bn-keras compare --dataset digits --model cnn` (13
#: configurations with batch normalization, 12 epochs; 2026-12-07, 2 CPU
#: cores) `statistics-mismatch` fired in 46 of 156 epochs, all with a
#: validation accuracy of 0.95 or less (from 0.10), and every run was clear
#: of it by its tenth epoch.
PROBE_GAP = 0.5
PROBE_NOISE_FACTOR = 3.0

REMEDY_RECALIBRATE = (
    "Recompute the statistics on data like this: report.fix() (`bn-keras "
    "doctor --fix OUT.keras`) or `bn_keras.recalibrate(model, data)`; during "
    "training, `bn_keras.callbacks.PreciseBN`. If this data comes from "
    "another domain than training, recalibrate on data of the domain the "
    "model will serve."
)
REMEDY_SHUFFLE = (
    "Shuffle the training data so that no batch holds one class only."
)
REMEDY_SMALL_BATCHES = (
    "Train with larger batches (normalizing ghost batches of 32 within "
    "them keeps a small batch's regularization: "
    '`bn_keras.convert_batchnorm(model, "ghost", virtual_batch_size=32)`); '
    "if only small batches fit, fine-tune with batch renormalization: "
    '`bn_keras.convert_batchnorm(model, "renorm")`.'
)
REMEDY_NOISY = f"{REMEDY_SHUFFLE} {REMEDY_SMALL_BATCHES}"
#: Batch means that spread more than this many times `1 / sqrt(batch
#: size)` data standard deviations come from batches that are not random
#: samples: random batches of B samples spread at most `1 / sqrt(B)` (as
#: much when a sample's values in a channel are all alike, less when they
#: vary within it). The margin covers the estimate from a few batches.
NOT_RANDOM_SPREAD = 1.5

# -- figures ------------------------------------------------------------------


def statistics_distance(moving_mean, moving_variance, mean, variance, epsilon):
    """How far moving statistics are from the data's, per channel.

    Returns a dict of arrays: `mean`, `|moving_mean - mean| /
    sqrt(variance + epsilon)` (in the data's standard deviations), and
    `log_variance`, `log((moving_variance + epsilon) / (variance +
    epsilon))`.

    >>> figures = bn_keras.diagnosis._detectors.statistics_distance(
    ...     np.zeros(2), np.ones(2), np.array([0.0, 3.0]), np.ones(2), 0.0)
    >>> figures["mean"].tolist(), figures["log_variance"].tolist()
    ([0.0, 3.0], [0.0, 0.0])
    """
    moving_mean, moving_variance, mean, variance = (
        np.asarray(a, dtype=np.float64)
        for a in (moving_mean, moving_variance, mean, variance)
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "mean": np.abs(moving_mean - mean) / np.sqrt(variance + epsilon),
            "log_variance": np.log(
                (moving_variance + epsilon) / (variance + epsilon)
            ),
        }


def batch_mean_spread(batch_means, variance, epsilon):
    """The median over channels of the standard deviation of a layer's
    batch means between batches, in the data's standard deviations.

    `batch_means` has shape `(batches, channels)`; channels whose data
    variance is 0 are left out (NaN if all are).
    """
    spread = np.std(np.asarray(batch_means, dtype=np.float64), axis=0)
    variance = np.asarray(variance, dtype=np.float64)
    kept = variance > 0
    if not np.any(kept):
        return float("nan")
    return float(np.median(spread[kept] / np.sqrt(variance[kept] + epsilon)))


def impact(changed_share, metric=None, before=None, after=None, higher=True):
    """What precise statistics change: the share of predictions that
    change (or, for values, their relative change) and, with labels, the
    metric as it is and after, `higher` saying whether higher is better."""
    return {
        "changed_share": float(changed_share),
        "metric": metric,
        "before": None if before is None else float(before),
        "after": None if after is None else float(after),
        "higher_is_better": bool(higher),
    }


def _gain(figures):
    """The metric's improvement from `before` to `after`, and the
    thresholds that apply to it: `(gain, warning, error)`."""
    before, after = figures["before"], figures["after"]
    if figures["higher_is_better"]:
        return after - before, WARNING_ACCURACY_GAIN, ERROR_ACCURACY_GAIN
    gain = (before - after) / before if before > 0 else 0.0
    return gain, WARNING_RELATIVE_GAIN, ERROR_RELATIVE_GAIN


def impact_severity(figures):
    """`"error"`, `"warning"`, `"info"` (precise statistics would make the
    metric worse) or `None` (within the noise of recalibration)."""
    changed = figures["changed_share"]
    if figures["metric"] is None or figures["before"] is None:
        if changed >= ERROR_CHANGED_SHARE:
            return "error"
        return "warning" if changed >= WARNING_CHANGED_SHARE else None
    gain, warning, error = _gain(figures)
    if gain >= error:
        return "error"
    if gain >= warning:
        return "warning"
    if gain <= -warning:
        return "info"
    return "warning" if changed >= ERROR_CHANGED_SHARE else None


def helps(figures):
    """Whether precise statistics do no harm: the metric after is at least
    the metric before (always, without labels)."""
    if figures is None or figures["metric"] is None:
        return True
    gain, _, _ = _gain(figures)
    return gain >= 0


# -- words ------------------------------------------------------------------


def share(value):
    """`0.123` as `"12%"`; below 1%, one decimal."""
    percent = 100 * value
    if 0 < percent < 1:
        return f"{percent:.1f}%"
    return f"{percent:.0f}%"


def figure(value):
    return (
        f"{value:.3f}" if abs(value) >= 0.01 or value == 0 else f"{value:.3g}"
    )


def _count(number, noun):
    """`"1 layer"`, `"2 layers"`."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def names(layers, count=NAMED_LAYERS):
    named = ", ".join(layers[:count])
    if len(layers) > count:
        named += f" and {len(layers) - count} more"
    return named


def _impact_words(figures):
    words = f"{share(figures['changed_share'])} of the predictions change"
    if figures["metric"] is not None and figures["before"] is not None:
        words += (
            f" and {figures['metric']} goes from {figure(figures['before'])} "
            f"to {figure(figures['after'])}"
        )
    return words


# -- detectors --------------------------------------------------------------


def _off(figures):
    mean = np.nanmax(figures["mean"], initial=0.0)
    variance = np.nanmax(np.abs(figures["log_variance"]), initial=0.0)
    return mean >= MEAN_DISTANCE or variance >= np.log(VARIANCE_FACTOR)


def _layer_evidence(name, figures):
    mean, log_variance = figures["mean"], figures["log_variance"]
    worst = np.argsort(-np.nan_to_num(mean, nan=np.inf))[:3]
    variance_worst = int(np.nanargmax(np.abs(log_variance)))
    return {
        "layer": name,
        "max_mean_distance": float(np.nanmax(mean)),
        "worst_channels": [int(c) for c in worst],
        "variance_ratio": float(np.exp(log_variance[variance_worst])),
        "variance_channel": variance_worst,
    }


def statistics_mismatch(distances, impact_figures, explained=()):
    """`statistics-mismatch`, with a severity from the measured impact of
    precise statistics; `None` within the noise of recalibration, and when
    the first layer whose statistics are off (or, with none off, any
    layer) is among `explained`: layers with a finding of their own
    (non-finite or collapsed statistics) that explains the impact."""
    severity = impact_severity(impact_figures)
    if severity is None:
        return None
    off = [name for name, figures in distances if _off(figures)]
    if (off and off[0] in explained) or (not off and explained):
        return None
    ranked = sorted(
        distances, key=lambda item: -np.nanmax(item[1]["mean"], initial=0)
    )
    listed = off or [name for name, _ in ranked[:NAMED_LAYERS]]
    evidence = dict(impact_figures)
    evidence["layers_off"] = len(off)
    evidence["layers"] = [
        _layer_evidence(name, figures)
        for name, figures in ranked[:EVIDENCE_LAYERS]
    ]
    worst = evidence["layers"][0]
    detail = (
        f"worst: {worst['layer']}, a channel's mean "
        f"{worst['max_mean_distance']:.2g} standard deviations off"
    )
    if severity == "info":
        return Finding(
            "statistics-mismatch",
            "info",
            listed,
            "The moving statistics differ from this data's "
            f"({detail}), but the model predicts better with them: with "
            f"precise statistics {_impact_words(impact_figures)}. A model "
            "fine-tuned on top of frozen batch normalization layers learned "
            "on their statistics as they are.",
            evidence,
            "Keep the statistics (report.fix() leaves them). Recalibrate only "
            "together with further training of the layers after them.",
        )
    origin = ""
    if len(off) > 1:
        origin = f", from {off[0]} on (the first one in forward order)"
    if len(distances) == 1:
        which = "The moving statistics of the batch normalization layer do"
    elif len(off) == len(distances):
        every = "both" if len(off) == 2 else f"all {len(off)}"
        which = (
            f"The moving statistics of {every} batch normalization layers do"
        )
    else:
        which = (
            f"The moving statistics of {len(off) or len(listed)} of the "
            f"{len(distances)} batch normalization layers do"
        )
    return Finding(
        "statistics-mismatch",
        severity,
        listed,
        f"{which} not match the statistics of the inputs they receive on "
        f"this data{origin}; {detail}. With precise statistics, "
        f"{_impact_words(impact_figures)}.",
        evidence,
        REMEDY_RECALIBRATE,
    )


def input_scale(first_layers):
    """The factor by which the data's standard deviation differs from the
    one the first layers' moving statistics imply, if every such layer
    agrees on one beyond `SCALE_FACTOR`; else `None`.

    `first_layers` lists `(layer, moving_mean, moving_variance,
    variance)`; layers whose statistics are at their initial values (mean
    0, variance 1: never trained) are left out.
    """
    factors = []
    for _, moving_mean, moving_variance, variance in first_layers:
        moving_mean = np.asarray(moving_mean, dtype=np.float64)
        moving_variance = np.asarray(moving_variance, dtype=np.float64)
        variance = np.asarray(variance, dtype=np.float64)
        if np.all(moving_mean == 0) and np.all(moving_variance == 1):
            continue
        kept = np.isfinite(moving_variance) & (moving_variance > 0)
        kept &= np.isfinite(variance) & (variance > 0)
        if not np.any(kept):
            continue
        log_ratio = 0.5 * np.log(variance[kept] / moving_variance[kept])
        median = np.median(log_ratio)
        if np.mean(np.abs(log_ratio - median) <= np.log(2)) < (
            SCALE_CONSISTENT_SHARE
        ):
            return None
        factors.append(median)
    if not factors or np.ptp(factors) > np.log(2):
        return None
    factor = float(np.exp(np.median(factors)))
    if max(factor, 1 / factor) < SCALE_FACTOR:
        return None
    return factor


def _scale_words(factor):
    if factor >= 1:
        return f"~{factor:.3g}x larger"
    return f"~{1 / factor:.3g}x smaller"


def preprocessing_mismatch(factor, layers, impact_figures=None, support=None):
    """`preprocessing-mismatch` for inputs `factor` times the scale the
    first `layers` were trained on.

    `impact_figures`: what dividing the inputs by `factor` changes (`None`
    when it could not be measured: a warning on the first layers'
    statistics alone); `support`: the share of samples whose prediction
    with rescaled inputs differs from the prediction with precise
    statistics. The scale is the explanation only if rescaling improves the
    metric beyond noise (with targets) or, without targets, changes
    predictions beyond noise and towards those of precise statistics;
    otherwise (statistics that are stale in a way that mimics a scale)
    `None`.
    """
    if factor is None:
        return None
    severity = "warning"
    if impact_figures is not None:
        severity = impact_severity(impact_figures)
        if severity in (None, "info"):
            return None
        if impact_figures["metric"] is None and (
            support is None or support > SCALE_SUPPORT_CHANGED_SHARE
        ):
            return None
    evidence = {"scale_factor": float(factor), "layers": list(layers)}
    message = (
        f"The inputs look {_scale_words(factor)} than in training: the "
        f"standard deviation of the inputs of {names(list(layers))} (the "
        "first batch normalization, with none before it) is off from its "
        "moving statistics by the same factor in every channel, as when "
        "pixels come in 0-255 to a model trained on 0-1."
    )
    if impact_figures is not None:
        evidence["rescaled"] = impact_figures
        evidence["rescaled_unlike_precise"] = support
        rescale = f"divided by {factor:.3g}"
        if factor < 1:
            rescale = f"multiplied by {1 / factor:.3g}"
        message += (
            f" With the inputs {rescale}, {_impact_words(impact_figures)}."
        )
    return Finding(
        "preprocessing-mismatch",
        severity,
        layers,
        message,
        evidence,
        "Fix the input pipeline: give the model its inputs as they were "
        "prepared in training (same scaling, e.g. `x / 255.0`, and the same "
        "normalization). Recalibrating would hide the mismatch in the first "
        "layers while the rest of the model sees shifted inputs; report.fix() "
        "(--fix) does not do it.",
    )


def noisy_batch_statistics(batch_size, disagreement, spreads, metrics=None):
    """`noisy-batch-statistics`: training mode at `batch_size` and
    inference (with precise statistics) disagree on a `disagreement` share
    of samples. `spreads`: `[(layer, spread)]`; `metrics`: `{"metric",
    "training", "inference", "higher_is_better"}` or `None`."""
    if disagreement < WARNING_DISAGREEMENT:
        return None
    severity = "error" if disagreement >= ERROR_DISAGREEMENT else "warning"
    evidence = {"batch_size": batch_size, "disagreement": float(disagreement)}
    words = (
        f"Normalized batch by batch as in training (batches of {batch_size}), "
        f"the model predicts differently from inference on "
        f"{share(disagreement)} of the samples"
    )
    if metrics is not None and metrics.get("metric") is not None:
        evidence.update(metrics)
        words += (
            f" ({metrics['metric']} {figure(metrics['training'])} in training "
            f"mode, {figure(metrics['inference'])} in inference)"
        )
        better = metrics["inference"] >= metrics["training"]
        if not metrics["higher_is_better"]:
            better = metrics["inference"] <= metrics["training"]
        if better and severity == "error":
            severity = "warning"  # inference is not the worse of the two
    ranked = sorted(
        ((n, s) for n, s in spreads if np.isfinite(s)), key=lambda i: -i[1]
    )
    evidence["batch_mean_spread"] = {n: float(s) for n, s in ranked[:10]}
    layers = [name for name, _ in ranked[:NAMED_LAYERS]]
    cause, remedy = _noisy_cause(batch_size, ranked, evidence)
    return Finding(
        "noisy-batch-statistics",
        severity,
        layers,
        words + cause,
        evidence,
        remedy,
    )


def _noisy_cause(batch_size, ranked, evidence):
    """Why batch statistics are noisy, `(words, remedy)`: batches that are
    not random samples (their means spread more than random batches'
    can), or batches too small for the network."""
    if not ranked:
        return (
            ": the statistics of single batches are too noisy (too small, "
            "or not shuffled) for what inference uses.",
            REMEDY_NOISY,
        )
    (name, spread), random = ranked[0], 1.0 / np.sqrt(batch_size)
    evidence["random_batch_spread"] = float(random)
    words = (
        f"; batch means vary by {spread:.2g} of the data's standard deviation "
        f"between batches in {name}"
    )
    if spread > NOT_RANDOM_SPREAD * random:
        evidence["random_batches"] = False
        return (
            words + f", more than random batches of {batch_size} can (at most "
            f"{random:.2g}): the batches are not random samples of the data "
            "(sorted data, one class per batch), and their statistics are not "
            "what inference uses.",
            REMEDY_NOISY,
        )
    evidence["random_batches"] = True
    return (
        words + f", as random batches of {batch_size} do (at most "
        f"{random:.2g}): this network turns the ordinary noise of batches "
        f"of {batch_size} into different predictions.",
        REMEDY_SMALL_BATCHES,
    )


def nonfinite_statistics(counts):
    """`nonfinite-statistics` (an error): `{layer: {name: count}}`."""
    counts = {name: bad for name, bad in counts.items() if bad}
    if not counts:
        return None
    weights = any(
        key in ("gamma", "beta") for bad in counts.values() for key in bad
    )
    remedy = (
        "Restore the weights from a checkpoint taken before training "
        "diverged; look for a NaN or Inf batch or a diverging loss "
        "(bn-keras's layers with `skip_nonfinite=True` skip such batches; "
        "`BatchNormMonitor(stop_on_nonfinite=True)` stops `fit` at the "
        "first)."
    )
    if not weights:
        remedy = (
            "report.fix() recomputes the moving statistics from the data. "
            + remedy
        )
    listed = list(counts)
    parts = [
        f"{name}: " + ", ".join(f"{key} ({n})" for key, n in bad.items())
        for name, bad in counts.items()
    ]
    return Finding(
        "nonfinite-statistics",
        "error",
        listed,
        f"NaN or Inf in {'; '.join(parts[:NAMED_LAYERS])}"
        + (
            f" and {len(parts) - NAMED_LAYERS} more layers"
            if len(parts) > 3
            else ""
        )
        + ": every prediction that passes through them is wrong.",
        {"nonfinite": counts},
        remedy,
    )


def collapsed_variance(layers, impact_figures=None):
    """`collapsed-variance`: channels whose moving variance is below
    epsilon although their input varies. `layers`: `{layer:
    (moving_variance, varies, epsilon)}`. The severity is that of
    `impact_figures` (precise statistics repair it), `"info"` without."""
    found = {}
    for name, (moving_variance, varies, epsilon) in layers.items():
        moving_variance = np.asarray(moving_variance, dtype=np.float64)
        collapsed = np.asarray(varies, dtype=bool) & (moving_variance < epsilon)
        if np.any(collapsed):
            found[name] = [int(np.sum(collapsed)), int(collapsed.size)]
    if not found:
        return None
    severity = "info"
    evidence = {"collapsed_channels": found}
    message = (
        f"The moving variance of {names(list(found))} is below epsilon in "
        "channels whose inputs vary: inference divides them by about "
        "sqrt(epsilon) and amplifies them"
    )
    if impact_figures is not None:
        severity = impact_severity(impact_figures) or "info"
        evidence.update(impact_figures)
        message += f"; with precise statistics, {_impact_words(impact_figures)}"
    return Finding(
        "collapsed-variance",
        "info" if severity == "info" else severity,
        list(found),
        message + ".",
        evidence,
        REMEDY_RECALIBRATE,
    )


def dead_channels(layers):
    """`dead-channels` (info): `{layer: (dead, channels)}`."""
    found = {
        name: [int(dead), int(total)]
        for name, (dead, total) in layers.items()
        if dead
    }
    if not found:
        return None
    parts = [f"{name} {d}/{t}" for name, (d, t) in found.items()]
    return Finding(
        "dead-channels",
        "info",
        list(found),
        "Channels with |gamma| < 1e-3 output beta whatever their input: "
        + ", ".join(parts[:NAMED_LAYERS])
        + (f" and {len(parts) - NAMED_LAYERS} more" if len(parts) > 3 else "")
        + ".",
        {"dead_channels": found},
        "Nothing to do at inference. They cost compute: pruning them (and the "
        "filters feeding them) makes the model smaller; strong weight decay "
        "on gamma (or too high a learning rate) produces them.",
    )


def dropout_before_batchnorm(pairs):
    """`dropout-before-batchnorm` (info): `[(dropout, batchnorm)]`."""
    if not pairs:
        return None
    return Finding(
        "dropout-before-batchnorm",
        "info",
        [bn for _, bn in pairs],
        "Dropout feeds "
        + names([f"{bn} (after {d})" for d, bn in pairs])
        + ": in training the batch normalization sees the variance of "
        "dropped-out inputs, in inference the variance without dropout "
        "(the variance shift of Li et al., 2019).",
        {"pairs": [list(p) for p in pairs]},
        "Put Dropout after the batch normalization layers (e.g. only before "
        "the classifier). Precise statistics remove the shift in inference: "
        "report.fix() or `bn_keras.recalibrate(model, data)` after training.",
    )


def bias_before_batchnorm(pairs):
    """`bias-before-batchnorm` (info): `[(layer, batchnorm)]`, layers with
    a bias and no activation right before batch normalization."""
    if not pairs:
        return None
    return Finding(
        "bias-before-batchnorm",
        "info",
        [bn for _, bn in pairs],
        "The bias of "
        + names([layer for layer, _ in pairs])
        + " is cancelled by the batch normalization after it (which "
        "subtracts the mean, then adds its own beta): wasted parameters.",
        {"pairs": [list(p) for p in pairs]},
        "Build those layers with `use_bias=False`; for deployment, "
        "`bn_keras.fold_batchnorm(model)` folds each batch normalization "
        "into the layer before it.",
    )


def batchnorm_before_output(layers):
    """`batchnorm-before-output` (info): batch normalization layers that
    normalize the model's output logits."""
    if not layers:
        return None
    return Finding(
        "batchnorm-before-output",
        "info",
        list(layers),
        f"{names(list(layers))} "
        f"{'normalizes' if len(layers) == 1 else 'normalize'} the model's "
        "output logits right before the output activation: every logit gets "
        "the scale and offset of gamma and beta, and inference depends on the "
        "moving statistics of the logits.",
        {"layers": list(layers)},
        "Remove it, or normalize before the last Dense layer instead.",
    )
