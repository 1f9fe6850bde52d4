"""The detectors on figures made up to sit on either side of each
threshold (no model: they are pure functions of numbers)."""

import json

import numpy as np
import pytest

from bn_keras.diagnosis import _detectors as d
from bn_keras.diagnosis.finding import Finding


def distances(shift, ratio=1.0, channels=4):
    """`statistics_distance` of moving statistics `shift` standard
    deviations off in channel 0 and variance `ratio` times too large."""
    mean = np.zeros(channels)
    mean[0] = shift
    return d.statistics_distance(
        mean, np.full(channels, ratio), np.zeros(channels), np.ones(channels), 0
    )


def test_statistics_distance_against_its_formula():
    figures = d.statistics_distance(
        [1.0, 2.0], [4.0, 1.0], [0.0, 1.0], [1.0, 3.0], 0.5
    )
    np.testing.assert_allclose(
        figures["mean"], [1 / np.sqrt(1.5), 1 / np.sqrt(3.5)]
    )
    np.testing.assert_allclose(
        figures["log_variance"], [np.log(4.5 / 1.5), np.log(1.5 / 3.5)]
    )


@pytest.mark.parametrize(
    "changed, before, after, severity",
    [
        (0.02, None, None, None),  # within the noise of recalibration
        (0.05, None, None, "warning"),
        (0.30, None, None, "error"),
        (0.05, 0.950, 0.955, None),  # half a point: noise
        (0.05, 0.950, 0.985, "warning"),  # 3.5 points, as measured
        (0.60, 0.100, 0.950, "error"),
        (0.20, 0.210, 0.110, "info"),  # precise statistics make it worse
        (0.30, 0.900, 0.900, "warning"),  # many change, metric even
    ],
)
def test_severity_follows_measured_impact(changed, before, after, severity):
    metric = None if before is None else "accuracy"
    impact = d.impact(changed, metric, before, after)
    finding = d.statistics_mismatch([("bn", distances(3.0))], impact)
    if severity is None:
        assert finding is None
    else:
        assert finding.severity == severity
        assert finding.code == "statistics-mismatch"


def test_a_loss_gains_relative_to_its_value():
    impact = d.impact(0.0, "mean squared error", 1.0, 0.96, higher=False)
    assert d.impact_severity(impact) is None  # 4%
    impact = d.impact(0.0, "mean squared error", 1.0, 0.9, higher=False)
    assert d.impact_severity(impact) == "warning"
    impact = d.impact(0.0, "mean squared error", 1.0, 0.4, higher=False)
    assert d.impact_severity(impact) == "error"
    assert not d.helps(d.impact(0.0, "mean squared error", 1.0, 1.1, False))


def test_mismatch_names_the_layers_off_from_the_first():
    impact = d.impact(0.5, "accuracy", 0.3, 0.9)
    finding = d.statistics_mismatch(
        [
            ("a", distances(0.1)),
            ("b", distances(2.0)),
            ("c", distances(0.2, ratio=3.0)),
        ],
        impact,
    )
    assert finding.layers == ("b", "c")
    assert "from b on" in finding.message
    assert finding.evidence["layers"][0]["layer"] == "b"
    assert finding.evidence["layers"][0]["max_mean_distance"] == 2.0
    assert finding.evidence["layers_off"] == 2
    json.dumps(finding.to_dict())  # serializable


def test_mismatch_explained_by_another_finding_is_left_out():
    impact = d.impact(0.5, "accuracy", 0.3, 0.9)
    layers = [("a", distances(0.1)), ("b", distances(2.0))]
    assert d.statistics_mismatch(layers, impact, explained={"b"}) is None
    assert d.statistics_mismatch(layers, impact, explained={"a"}) is not None


def test_input_scale_needs_one_factor_everywhere():
    rng = np.random.default_rng(0)
    moving = rng.uniform(0.1, 2.0, 16)
    scaled = [("bn", rng.normal(size=16), moving, moving * 255.0**2)]
    assert d.input_scale(scaled) == pytest.approx(255.0)
    smaller = [("bn", rng.normal(size=16), moving, moving / 100.0)]
    assert d.input_scale(smaller) == pytest.approx(0.1)
    # Stale statistics: a different factor in every channel.
    spread = 10 ** rng.uniform(0, 4, 16)
    stale = [("bn", np.full(16, 0.5), np.ones(16), spread)]
    assert d.input_scale(stale) is None
    # Never trained: initial statistics are left out.
    initial = [("bn", np.zeros(16), np.ones(16), np.full(16, 1e4))]
    assert d.input_scale(initial) is None
    # Within the factor: nothing.
    assert d.input_scale([("bn", moving, moving, moving * 9)]) is None


def test_preprocessing_mismatch_severity_from_rescaling():
    impact = d.impact(0.6, "accuracy", 0.10, 0.95)
    finding = d.preprocessing_mismatch(255.0, ["bn"], impact)
    assert finding.severity == "error"
    assert "~255x larger" in finding.message
    assert "divided by 255" in finding.message
    assert d.preprocessing_mismatch(255.0, ["bn"]).severity == "warning"
    # Rescaling does not help: the scale does not explain it.
    quiet = d.impact(0.2, "accuracy", 0.9, 0.85)
    assert d.preprocessing_mismatch(0.01, ["bn"], quiet) is None
    smaller = d.preprocessing_mismatch(0.01, ["bn"], impact)
    assert "multiplied by 100" in smaller.message
    # Without targets: rescaled inputs must predict as precise statistics.
    unlabeled = d.impact(0.6)
    assert d.preprocessing_mismatch(255.0, ["bn"], unlabeled, 0.5) is None
    found = d.preprocessing_mismatch(255.0, ["bn"], unlabeled, 0.02)
    assert found.severity == "error"


@pytest.mark.parametrize(
    "disagreement, metrics, severity",
    [
        (0.01, None, None),
        (0.10, None, "warning"),
        (0.30, None, "error"),
        (0.30, {"training": 0.9, "inference": 0.6}, "error"),
        # Inference does better than training mode: not wrong.
        (0.30, {"training": 0.5, "inference": 0.8}, "warning"),
    ],
)
def test_noisy_batch_statistics(disagreement, metrics, severity):
    if metrics is not None:
        metrics = {"metric": "accuracy", "higher_is_better": True, **metrics}
    finding = d.noisy_batch_statistics(
        2, disagreement, [("a", 0.1), ("b", 0.7)], metrics
    )
    if severity is None:
        assert finding is None
        return
    assert finding.severity == severity
    assert finding.layers[0] == "b"  # the noisiest first
    assert 'convert_batchnorm(model, "renorm")' in finding.remedy
    assert finding.evidence["batch_mean_spread"] == {"b": 0.7, "a": 0.1}


def test_batch_mean_spread_in_standard_deviations():
    means = np.array([[0.0, 1.0], [2.0, 1.0]])
    # Channel 0: spread 1, data std 2 -> 0.5; channel 1: no spread.
    assert d.batch_mean_spread(means, [4.0, 1.0], 0.0) == pytest.approx(0.25)


def test_nonfinite_statistics():
    assert d.nonfinite_statistics({"a": {}, "b": {}}) is None
    finding = d.nonfinite_statistics({"a": {}, "b": {"moving_variance": 2}})
    assert (finding.severity, finding.layers) == ("error", ("b",))
    assert finding.remedy.startswith("report.fix() recomputes")
    weights = d.nonfinite_statistics({"b": {"gamma": 1}})
    assert "report.fix()" not in weights.remedy


def test_collapsed_variance_only_where_inputs_vary():
    varies = np.array([True, True, False])
    layers = {"bn": (np.array([1e-6, 1.0, 0.0]), varies, 1e-3)}
    finding = d.collapsed_variance(layers)
    assert finding.evidence["collapsed_channels"] == {"bn": [1, 3]}
    assert finding.severity == "info"
    impact = d.impact(0.4, "accuracy", 0.5, 0.9)
    assert d.collapsed_variance(layers, impact).severity == "error"
    constant = {"bn": (np.array([0.0]), np.array([False]), 1e-3)}
    assert d.collapsed_variance(constant) is None


def test_renorm_clipping_saturated_needs_successive_writes():
    saturated = [0.95] * d.SATURATED_WRITES
    finding = d.renorm_clipping_saturated(
        {"a": [0.1] + saturated, "b": saturated[:-1] + [0.5], "c": [1.0]}
    )
    assert finding.layers == ("a",)
    assert finding.severity == "warning"
    assert finding.code == "renorm-clipping-saturated"


def test_probe_gap_above_batch_noise():
    # 6 values per channel: batch noise alone gives a gap of 0.5.
    assert d.probe_gap({"a": 0.6}, rows=6) is None
    finding = d.probe_gap({"a": 0.6, "b": 0.1}, rows=2048)
    assert finding.code == "statistics-mismatch"
    assert finding.layers == ("a",)


def test_structural_findings_are_information():
    for finding in (
        d.dropout_before_batchnorm([("dropout", "bn")]),
        d.bias_before_batchnorm([("dense", "bn")]),
        d.batchnorm_before_output(["bn"]),
        d.dead_channels({"bn": (2, 8), "other": (0, 8)}),
    ):
        assert finding.severity == "info"
        assert finding.layers == ("bn",)
    assert d.dropout_before_batchnorm([]) is None
    assert d.dead_channels({"bn": (0, 8)}) is None


@pytest.mark.parametrize(
    "field, value, received",
    [("code", "nan", "code='nan'"), ("severity", "fatal", "severity='fatal'")],
)
def test_finding_checks_its_code_and_severity(field, value, received):
    fields = dict(
        code="dead-channels",
        severity="info",
        layers=["bn"],
        message="m",
        evidence={},
        remedy="r",
    )
    fields[field] = value
    with pytest.raises(ValueError, match=f"Received: {received}"):
        Finding(**fields)
