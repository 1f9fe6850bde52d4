"""The detectors on figures made up to sit on either side of each
threshold (no model: they are pure functions of numbers)."""

import json

import numpy as np
import pytest

from bn_keras.diagnosis import _detectors as d
from bn_keras.diagnosis import _training_detectors as t
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


@pytest.mark.parametrize(
    "spread, random_batches", [(0.15, True), (0.25, True), (0.5, False)]
)
def test_noisy_batches_random_or_not(spread, random_batches):
    """Random batches of 32 spread their means by at most 1/sqrt(32) =
    0.18 standard deviations; beyond 1.5 times that, they are not random
    samples and the remedy starts with shuffling."""
    finding = d.noisy_batch_statistics(32, 0.2, [("bn", spread)])
    assert finding.evidence["random_batches"] is random_batches
    assert finding.evidence["random_batch_spread"] == pytest.approx(
        32**-0.5
    )
    assert finding.remedy.startswith("Shuffle") is not random_batches
    assert 'convert_batchnorm(model, "renorm")' in finding.remedy
    if random_batches:
        assert finding.message.endswith(
            f"batch means vary by {spread:.2g} of the data's standard "
            "deviation between batches in bn, as random batches of 32 do (at "
            "most 0.18): this network turns the ordinary noise of batches "
            "of 32 into different predictions."
        )
    else:
        assert "the batches are not random samples" in finding.message


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
    finding = t.renorm_clipping_saturated(
        {"a": [0.1] + saturated, "b": saturated[:-1] + [0.5], "c": [1.0]}
    )
    assert finding.layers == ("a",)
    assert finding.severity == "warning"
    assert finding.code == "renorm-clipping-saturated"


def test_probe_gap_above_batch_noise():
    # 6 values per channel: batch noise alone gives a gap of 0.5.
    assert t.probe_gap({"a": 0.6}, rows=6) is None
    finding = t.probe_gap({"a": 0.6, "b": 0.1}, rows=2048)
    assert finding.code == "statistics-mismatch"
    assert finding.layers == ("a",)


def lag(mean_distances, variance_ratio=1.0):
    """`statistics_distance` of moving statistics `mean_distances`
    standard deviations off per channel, variances `variance_ratio` off."""
    mean_distances = np.asarray(mean_distances, dtype=np.float64)
    channels = mean_distances.size
    return d.statistics_distance(
        mean_distances,
        np.full(channels, variance_ratio),
        np.zeros(channels),
        np.ones(channels),
        0.0,
    )


@pytest.mark.parametrize(
    "distances, ratio, lagging",
    [
        ([0.4, 0.6], 1.0, True),  # 0.5 standard deviations
        ([0.3, 0.6], 1.0, False),
        ([0.6, 0.6, 0.0], 1.0, True),  # in two channels of three
        ([9.0, 0.0, 0.0], 1.0, False),  # one odd channel
        ([0.0, 0.0], 2.0, True),  # the variance twice the batches'
        ([0.0, 0.0], 0.5, True),  # or half
        ([0.0, 0.0], 1.9, False),
    ],
)
def test_lagging_statistics_in_the_median_channel(distances, ratio, lagging):
    finding = t.lagging_statistics(
        [("bn", lag(distances, ratio), 0.99, None)], 20
    )
    assert (finding is not None) == lagging
    if lagging:
        assert (finding.code, finding.severity) == (
            "statistics-mismatch",
            "warning",
        )
        assert finding.layers == ("bn",)
        assert finding.remedy == t.REMEDY_LAGGING
        (evidence,) = finding.evidence["layers"]
        assert evidence["mean_distance"] == pytest.approx(np.median(distances))
        assert evidence["variance_factor"] == pytest.approx(
            max(ratio, 1 / ratio)
        )


def test_lagging_statistics_names_the_worst_layer_and_its_probe_gap():
    finding = t.lagging_statistics(
        [
            ("a", lag([0.6, 0.6]), 0.99, None),
            ("b", lag([0.1, 0.1]), 0.99, None),
            ("c", lag([0.0], 16.0), 0.999, None),
        ],
        steps=19,
        gaps={"c": 4.2},
    )
    assert finding.layers == ("a", "c")
    assert "over the last 19 training steps, c's moving mean was 0 " in (
        finding.message
    )
    assert "a factor 16, in its median channel (momentum 0.999: " in (
        finding.message
    )
    assert "each step moves the statistics 0.1% of the way" in finding.message
    assert finding.message.endswith(
        "On the probe batch, c's output in training and in inference differs "
        "by 4.2 of its spread in the median channel."
    )
    # Non-finite channels are left out (their own finding says so).
    nan = lag([np.nan, 0.1])
    assert t.lagging_statistics([("bn", nan, 0.9, None)], 5) is None


@pytest.mark.parametrize(
    "clipped, lagging",
    [(1.0, True), (0.9, True), (0.5, False), (np.nan, False)],
)
def test_a_renorm_layer_lags_only_while_its_correction_is_clipped(
    clipped, lagging
):
    """Unclipped, renorm's r and d train the layer on what inference
    computes, however far the batches are from its statistics."""
    finding = t.lagging_statistics([("bn", lag([2.0], 4.0), 0.99, clipped)], 9)
    assert (finding is not None) == lagging


def test_probe_gap_per_layer_rows_and_explained_layers():
    gaps = {"dense": 0.9, "ghost": 0.9, "lagging": 3.0}
    rows = {"dense": 2048, "ghost": 4, "lagging": 2048}
    # Ghost batches of 4 values: noise alone gives 0.61, 0.9 is within 3x.
    finding = t.probe_gap(gaps, rows, explained=("lagging",))
    assert finding.layers == ("dense",)
    assert finding.evidence["probe_gap"] == {"dense": 0.9}
    assert finding.evidence["batch_noise"]["dense"] == pytest.approx(
        np.sqrt(1.5 / 2048)
    )
    assert finding.remedy == d.REMEDY_RECALIBRATE


@pytest.mark.parametrize(
    "gap, rows, noisy",
    [
        (0.87, 2, True),  # sqrt(1.5 / 2): the noise of batches of 2
        (0.55, 6, True),  # noise 0.5: at the threshold
        (0.45, 2, False),  # the gap itself below half the spread
        (0.6, 7, False),  # noise 0.46 < 0.5: not called noisy
        (3.0, 2, False),  # beyond 3x the noise: a mismatch instead
    ],
)
def test_probe_batch_noise(gap, rows, noisy):
    finding = t.probe_batch_noise(
        {"bn": gap}, {"bn": rows}, {"bn": (rows, True)}
    )
    assert (finding is not None) == noisy
    if noisy:
        assert (finding.code, finding.severity) == (
            "noisy-batch-statistics",
            "warning",
        )
        assert f"ghost batches of only {rows} values per channel" in (
            finding.message
        )
        assert finding.remedy == d.REMEDY_NOISY
    # A gap `probe_gap` does not report unless it is beyond the noise.
    mismatch = t.probe_gap({"bn": gap}, {"bn": rows})
    assert not (noisy and mismatch is not None)


@pytest.mark.parametrize(
    "warmup, reported",
    [
        (None, True),  # fixed bounds
        ((100, 24), True),  # the warm-up lasts past the fit's end
        ((20, 24), False),  # the schedule relaxes the bounds within the fit
        ((100, None), False),  # the fit's length is unknown
    ],
)
def test_renorm_saturation_during_a_warm_up(warmup, reported):
    # Writes whose bounds (rmax 1, dmax 0) clip everything by construction.
    fractions = {"bn": [None] * d.SATURATED_WRITES}
    finding = t.renorm_clipping_saturated(
        fractions,
        {"bn": {"rmax": 1.0, "dmax": 0.0}},
        {} if warmup is None else {"bn": warmup},
    )
    assert (finding is not None) == reported
    if not reported:
        return
    assert finding.remedy == t.REMEDY_RENORM
    if warmup is None:
        assert "rmax 1 and dmax 0 allow no correction" in finding.message
    else:
        assert "until step 100, after this fit's last step (24)" in (
            finding.message
        )


def test_writes_of_an_ended_warm_up_do_not_count():
    room = {"bn": {"rmax": 1.5, "dmax": 0.5}}
    two_in_warm_up = {"bn": [None, None, 1.0, 1.0, 1.0]}
    assert t.renorm_clipping_saturated(two_in_warm_up, room) is None
    finding = t.renorm_clipping_saturated({"bn": [None] + [1.0] * 5}, room)
    assert finding.evidence["clipped_fraction"] == {"bn": [1.0] * 5}


def test_renorm_saturation_with_room_blames_the_renorm_statistics():
    finding = t.renorm_clipping_saturated(
        {"bn": [0.95] * d.SATURATED_WRITES}, {"bn": {"rmax": 3.0, "dmax": 5.0}}
    )
    assert "(rmax 3, dmax 5 in bn): the correction stays at its bounds" in (
        finding.message
    )
    assert finding.evidence["bounds"] == {"bn": {"rmax": 3.0, "dmax": 5.0}}


def test_constant_channels_are_information():
    assert t.constant_channels({"bn": (0, 0, 8)}) is None
    finding = t.constant_channels(
        {"a": (2, 0, 8), "b": (0, 1, 4), "c": (0, 0, 4)}
    )
    assert (finding.code, finding.severity) == ("constant-channels", "info")
    assert finding.layers == ("a", "b")
    assert (
        "a: 2/8 on the training batches; b: 1/4 on the probe batch"
        in finding.message
    )
    assert finding.evidence["constant_channels"] == {
        "a": [2, 0, 8],
        "b": [0, 1, 4],
    }


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
