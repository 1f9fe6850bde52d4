"""Diagnose a model's batch normalization against data."""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import numpy as np

from bn_keras._statistics import dead_channels
from bn_keras._statistics import nonfinite
from bn_keras._validation import check_positive_int
from bn_keras.diagnosis import _detectors
from bn_keras.diagnosis import _measurements
from bn_keras.diagnosis._structure import structure_findings
from bn_keras.diagnosis.diagnosis_report import DiagnosisReport
from bn_keras.models import _predictions
from bn_keras.models._placement import batchnorm_neighbours

#: What the report says about a model without batch normalization.
NO_BATCHNORM = "no batch normalization layers: nothing to diagnose"

#: The codes `report.fix()` repairs with precise statistics.
_FIXED_BY_STATISTICS = ("statistics-mismatch", "collapsed-variance")


def diagnose(
    model: keras.Model,
    data: Any,
    batch_size: int | None = None,
    steps: int | None = None,
) -> DiagnosisReport:
    """Finds what is wrong with a model's batch normalization, with the
    evidence, and what precise statistics would fix.

    Measures the model against `data`, without changing it (weights,
    statistics and trainable flags stay as they are), in passes over the
    data that share one compiled function:

    1. every batch normalization layer in its training transform, at
       `batch_size` (the predictions the model learned to make; the
       spread of each layer's batch statistics between batches);
    2. inference as the model is (its predictions);
    3. precise statistics: the population statistics of each layer's
       input, as `bn_keras.recalibrate` computes them, in two passes
       (`method="two-pass"`) where that is exact (no batch normalization
       layer with more than one other before it), else in one
       (`method="one-pass"`); the first is pass 1 whenever that is the
       same computation;
    4. inference with the precise statistics (what they would change).

    A model with MobileNetV2's 52 layers, with data at batch size 32, gets
    three passes; `report.summary["precise_method"]` says which method
    computed the precise statistics.

    A model whose first layers' statistics point to inputs on another scale
    gets one more inference pass, with the inputs rescaled. From these, the
    detectors of `bn_keras.diagnosis` report findings, each with a stable
    code (`statistics-mismatch`, `preprocessing-mismatch`,
    `noisy-batch-statistics`, `nonfinite-statistics`, `collapsed-variance`,
    `dropout-before-batchnorm`, `bias-before-batchnorm`,
    `batchnorm-before-output`, `dead-channels`), the layers concerned, a
    message, the evidence and a remedy. Severities follow the measured
    impact: `"error"` when predictions are wrong because of it,
    `"warning"` when they would measurably improve (beyond the noise of
    recalibrating a model whose statistics are already precise), `"info"`
    for what costs nothing at inference.

    Every batch normalization layer that `bn_keras.find_batchnorm` finds is
    measured: Keras's and bn-keras's, in nested models and `BNBlock`s, with
    raw tensor operations between them. Only the model's first output is
    compared (as classes, or as values for regression; see
    `bn_keras.models.train_inference_gap`).

    Args:
        model: A Keras model.
        data: Arrays (a NumPy array or tensor, a dict or list of them, or a
            tuple `(x, y)`), split into batches of `batch_size`; or a
            `tf.data.Dataset`, a `keras.utils.PyDataset` or an iterable of
            batches (`x`, `(x, y)` or `(x, y, sample_weight)`), read once
            and kept in memory. Targets `y` are optional: with them, the
            report states the metric (accuracy, or the mean squared error
            for values) as it is and with precise statistics. Use data the
            model should predict well, without augmentation.
        batch_size: The batch size the model is trained with, for array
            data. Defaults to `32`. (Inference and the statistics use
            batches of at least 32.)
        steps: Optional positive integer: the number of batches (of
            `batch_size`) to use. Defaults to all of them.

    Returns:
        A `bn_keras.diagnosis.DiagnosisReport`: print it for a table,
        `report.findings`, `report.ok`, `report.to_json()`, and
        `report.fix()` for a new model with the fixes that need no
        training.

    Example:

    A model trained for a few steps with a momentum so high that its
    moving statistics have barely left their initial values:

    >>> model = keras.Sequential([
    ...     keras.Input((4,)),
    ...     keras.layers.Dense(8),
    ...     keras.layers.BatchNormalization(momentum=0.999),
    ...     keras.layers.ReLU(),
    ...     keras.layers.Dense(3),
    ... ])
    >>> rng = np.random.default_rng(0)
    >>> x = (rng.normal(size=(256, 4)) * 5 + 10).astype("float32")
    >>> y = (x[:, 0] > 10).astype("int32") + (x[:, 1] > 10)
    >>> model.compile("adam", keras.losses.SparseCategoricalCrossentropy(
    ...     from_logits=True))
    >>> _ = model.fit(x, y, epochs=5, verbose=0)
    >>> report = bn_keras.diagnose(model, (x, y))
    >>> report.ok
    False
    >>> "statistics-mismatch" in [finding.code for finding in report.findings]
    True
    >>> fixed = report.fix()
    """
    check_positive_int("batch_size", batch_size, allow_none=True)
    steps = check_positive_int("steps", steps, allow_none=True)
    if not isinstance(model, keras.Model):
        raise TypeError(
            "Argument `model` must be a `keras.Model`. "
            f"Received: model of type {type(model).__name__}"
        )
    entries = batchnorm_neighbours(model)
    if not entries:
        return DiagnosisReport(
            [], {"model": model.name, "layers": 0, "notes": [NO_BATCHNORM]}
        )
    measured = _measurements.measure(model, entries, data, batch_size, steps)
    findings, impact = _findings(model, entries, measured)
    return DiagnosisReport(
        findings,
        _summary(model, measured, impact, findings),
        model=model,
        precise=_fix_plan(findings, measured, impact),
    )


def _kind(measured):
    outputs, targets = measured.outputs["inference"], measured.targets
    kind = _predictions.prediction_kind(outputs, targets)
    probabilities = None
    if kind == "binary":
        probabilities = _predictions.classes_are_probabilities(outputs)
    return kind, probabilities


def _impact(measured, before, after):
    """`_detectors.impact` of going from outputs `before` to `after`."""
    kind, probabilities = _kind(measured)
    outputs = measured.outputs
    changed = _predictions.changed_share(
        outputs[before], outputs[after], kind, probabilities
    )
    if measured.targets is None:
        return _detectors.impact(changed)
    name, higher = _predictions.METRICS[kind]
    return _detectors.impact(
        changed,
        name,
        _predictions.metric(
            outputs[before], measured.targets, kind, probabilities
        ),
        _predictions.metric(
            outputs[after], measured.targets, kind, probabilities
        ),
        higher,
    )


def _layer_figures(measured):
    """`[(path, layer, statistics, (mean, variance), depth)]` of the
    layers with finite statistics that the forward pass called, with the
    precise statistics of their inputs."""
    return [
        entry
        for entry in zip(
            measured.paths,
            measured.layers,
            measured.statistics,
            measured.precise,
            measured.depths,
        )
        if entry[3] is not None and entry[2] and not nonfinite(entry[2])
    ]


def _statistics_findings(measured, impact, nonfinite_layers):
    figures = _layer_figures(measured)
    distances = [
        (
            path,
            _detectors.statistics_distance(
                statistics["moving_mean"],
                statistics["moving_variance"],
                mean,
                variance,
                layer.epsilon,
            ),
        )
        for path, layer, statistics, (mean, variance), _ in figures
    ]
    collapsed_figures = {
        path: (
            statistics["moving_variance"],
            variance > layer.epsilon,
            layer.epsilon,
        )
        for path, layer, statistics, (_, variance), _ in figures
    }
    collapsed = _detectors.collapsed_variance(collapsed_figures, impact)
    explained = set(nonfinite_layers)
    if collapsed is not None:
        explained.update(collapsed.layers)
    # Measured against precise statistics, a layer's distance is its own
    # (not carried over from the layers before it): the layers with a
    # finding of their own count as matching, and any other layer off is a
    # mismatch.
    mismatch = _detectors.statistics_mismatch(
        [
            (path, _matching(figures) if path in explained else figures)
            for path, figures in distances
        ],
        impact,
        explained,
    )
    if mismatch is not None and collapsed is not None:
        # The impact of precise statistics is the mismatch's as much as
        # the collapsed variances': measure theirs alone.
        collapsed = _detectors.collapsed_variance(
            collapsed_figures, _collapsed_impact(measured, collapsed.layers)
        )
    return [mismatch, collapsed]


def _matching(figures):
    """`statistics_distance` figures of statistics that match the data."""
    return {key: np.zeros_like(value) for key, value in figures.items()}


def _collapsed_impact(measured, paths):
    """`_impact` of precise statistics in the layers at `paths` only."""
    indices = [measured.paths.index(path) for path in paths]
    measured.outputs["collapsed"] = _measurements.partly_precise_outputs(
        measured, indices
    )
    return _impact(measured, "inference", "collapsed")


def _initial(statistics):
    """Whether a layer's moving statistics are still their initial values
    (mean 0, variance 1): never updated."""
    return bool(
        np.all(statistics["moving_mean"] == 0)
        and np.all(statistics["moving_variance"] == 1)
    )


def _untrained(measured):
    """Whether every batch normalization layer holds its initial weights
    and statistics (gamma 1, beta 0, moving mean 0, moving variance 1), at
    least one with gamma or beta: the model was never trained (or its batch
    normalization never was)."""
    statistics = [s for s in measured.statistics if s]
    affine = [
        s[key] for s in statistics for key in ("gamma", "beta") if key in s
    ]
    return (
        bool(statistics and affine)
        and all(_initial(s) for s in statistics)
        and all(np.all(s.get("gamma", 1) == 1) for s in statistics)
        and all(np.all(s.get("beta", 0) == 0) for s in statistics)
    )


def _preprocessing(measured):
    # The first layers' precise statistics are exact: no batch
    # normalization layer comes before them. Statistics never updated say
    # nothing of the scale the model was trained on.
    first = [
        (path, stats["moving_mean"], stats["moving_variance"], variance)
        for path, _, stats, (_, variance), depth in _layer_figures(measured)
        if depth == 1 and not _initial(stats)
    ]
    factor = _detectors.input_scale(first)
    if factor is None:
        return None
    rescaled = _measurements.rescaled_outputs(measured, factor)
    impact = support = None
    if rescaled is not None:
        measured.outputs["rescaled"] = rescaled
        impact = _impact(measured, "inference", "rescaled")
        support = _impact(measured, "precise", "rescaled")["changed_share"]
    return _detectors.preprocessing_mismatch(
        factor, [path for path, *_ in first], impact, support
    )


def _noisy(measured):
    kind, probabilities = _kind(measured)
    outputs = measured.outputs
    # Against the precise statistics or the statistics as they are,
    # whichever training mode agrees with more: what remains is noise.
    disagreement = min(
        _predictions.changed_share(
            outputs[other], outputs["training"], kind, probabilities
        )
        for other in ("precise", "inference")
    )
    spreads = [
        (
            path,
            _detectors.batch_mean_spread(means, pooled.variance, layer.epsilon),
        )
        for path, layer, means, pooled in zip(
            measured.paths,
            measured.layers,
            measured.batch_means,
            measured.training_inputs,
        )
        if means is not None and pooled is not None
    ]
    metrics = None
    if measured.targets is not None:
        name, higher = _predictions.METRICS[kind]
        metrics = {
            "metric": name,
            "higher_is_better": higher,
            **{
                mode: _predictions.metric(
                    outputs[key], measured.targets, kind, probabilities
                )
                for mode, key in (
                    ("training", "training"),
                    ("inference", "precise"),
                )
            },
        }
    return _detectors.noisy_batch_statistics(
        measured.batch_size, disagreement, spreads, metrics
    )


def _findings(model, entries, measured):
    """The findings, most serious first, and the impact of precise
    statistics."""
    impact = _impact(measured, "inference", "precise")
    broken = _detectors.nonfinite_statistics(
        {
            path: nonfinite(statistics)
            for path, statistics in zip(measured.paths, measured.statistics)
        }
    )
    preprocessing = _preprocessing(measured)
    findings = [broken, preprocessing]
    if preprocessing is None or preprocessing.severity == "info":
        # Otherwise a wrong input scale explains the statistics' mismatch,
        # and precise statistics would hide it.
        findings += _statistics_findings(
            measured, impact, broken.layers if broken else ()
        )
    untrained = _untrained(measured)
    if untrained:
        # Initial statistics that predict better than precise ones: the
        # predictions of an untrained model, no sign either way.
        findings = [
            f
            for f in findings
            if f is None
            or (f.code, f.severity) != ("statistics-mismatch", "info")
        ]
    noisy = _noisy(measured)
    if noisy is not None and untrained:
        # Training-mode predictions of an untrained model are no sign of
        # the batch size it was trained at.
        noisy = dataclasses.replace(noisy, severity="info")
    findings.append(noisy)
    findings += structure_findings(model, entries)
    findings.append(
        _detectors.dead_channels(
            {
                path: (
                    int(np.sum(dead_channels(statistics["gamma"]))),
                    statistics["gamma"].size,
                )
                for path, statistics in zip(measured.paths, measured.statistics)
                if "gamma" in statistics
            }
        )
    )
    order = {severity: i for i, severity in enumerate(("error", "warning"))}
    findings = [f for f in findings if f is not None]
    findings.sort(key=lambda f: order.get(f.severity, 2))
    return findings, impact


def _summary(model, measured, impact, findings):
    summary = {
        "model": model.name,
        "layers": len(measured.layers),
        "samples": measured.num_samples,
        "batch_size": measured.batch_size,
        "precise_method": measured.precise_method,
        "changed_share": impact["changed_share"],
        "metric": impact["metric"],
        "before": impact["before"],
        "after": impact["after"],
        "notes": [],
    }
    if any(
        f.code == "preprocessing-mismatch" and f.severity != "info"
        for f in findings
    ):
        summary["notes"].append(
            "precise statistics would adapt the first layers to the wrong "
            "input scale and hide it: fix the input pipeline first"
        )
    if _untrained(measured):
        summary["notes"].append(
            "every batch normalization layer holds its initial weights and "
            "statistics: the model looks untrained (train it before judging "
            "its predictions)"
        )
    if measured.targets is None:
        summary["notes"].append(
            "no targets: the report cannot say whether precise statistics "
            "make predictions better, only how many change"
        )
    return summary


def _fix_plan(findings, measured, impact):
    """The precise statistics `fix()` sets, per layer (`None`: nothing to
    set), or `None` when no fix needs them or they would not help."""
    codes = {f.code: f for f in findings}
    statistics = [
        codes[code].severity in ("error", "warning")
        for code in _FIXED_BY_STATISTICS
        if code in codes
    ]
    repair = "nonfinite-statistics" in codes and not any(
        key in ("gamma", "beta")
        for bad in codes["nonfinite-statistics"].evidence["nonfinite"].values()
        for key in bad
    )
    if not (any(statistics) or repair) or not _detectors.helps(impact):
        return None
    return {
        id(layer): precise
        for layer, precise in zip(measured.layers, measured.precise)
    }
