"""`bn_keras.diagnose` on a zoo of small models of scikit-learn's digits:
each fault built into a model, found by its code, and fixed where it can
be without training; healthy models without a warning or an error.

The models train once per session (module-scoped fixtures) and the faults
are made on copies of the healthy one.
"""

import json

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import bn_keras

L = keras.layers


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    x = data.data.astype("float32") / 16.0
    return train_test_split(
        x, data.target, test_size=0.3, random_state=0, stratify=data.target
    )


def mlp(momentum=0.9, normalization=L.BatchNormalization):
    model = keras.Sequential(
        [
            keras.Input((64,)),
            L.Dense(64, use_bias=False),
            normalization(momentum=momentum),
            L.ReLU(),
            L.Dense(32, use_bias=False),
            normalization(momentum=momentum),
            L.ReLU(),
            L.Dense(10),
        ]
    )
    model.compile(
        keras.optimizers.Adam(3e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def trained(digits, epochs, batch_size=32, **kwargs):
    x_train, _, y_train, _ = digits
    keras.utils.set_random_seed(0)
    model = mlp(**kwargs)
    model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, verbose=0)
    return model


@pytest.fixture(scope="module")
def healthy(digits):
    return trained(digits, epochs=15)


@pytest.fixture(scope="module")
def healthy_ours(digits):
    return trained(
        digits, epochs=15, normalization=bn_keras.layers.BatchNormalization
    )


def copy(model):
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def accuracy(model, x, y):
    return float(np.mean(model.predict(x, verbose=0).argmax(-1) == y))


def codes(report, severities=("error", "warning", "info")):
    return {
        f.code: f.severity for f in report.findings if f.severity in severities
    }


def test_healthy_models_have_no_warning(digits, healthy, healthy_ours):
    _, x_test, _, y_test = digits
    for model, data in (
        (healthy, (x_test, y_test)),
        (healthy_ours, (x_test, y_test)),
        (healthy, x_test),  # without labels
    ):
        report = bn_keras.diagnose(model, data)
        assert report.ok, str(report)
        assert codes(report, ("error", "warning")) == {}
        assert report.summary["changed_share"] < 0.015
        assert report.fixes == []


def test_without_batchnorm_nothing_to_diagnose(digits):
    _, x_test, _, y_test = digits
    model = keras.Sequential([keras.Input((64,)), L.Dense(10)])
    report = bn_keras.diagnose(model, (x_test, y_test))
    assert report.ok and report.findings == []
    assert "no batch normalization layers: nothing to diagnose" in str(report)
    assert report.summary["layers"] == 0


def initial_statistics(model):
    """`model` with every moving mean 0 and variance 1, as before
    training."""
    for layer in bn_keras.find_batchnorm(model):
        layer.moving_mean.assign(np.zeros(layer.moving_mean.shape))
        layer.moving_variance.assign(np.ones(layer.moving_variance.shape))
    return model


def assert_fixed_as_healthy(report, healthy, x, y):
    """`report.fix()` predicts within 2 points of the healthy model."""
    fixed = report.fix()
    assert accuracy(fixed, x, y) > accuracy(healthy, x, y) - 0.02


def test_stale_statistics_are_an_error_that_fix_repairs(digits, healthy):
    _, x_test, _, y_test = digits
    # Moving statistics never updated in training: still at their initial
    # values (mean 0, variance 1).
    stale = initial_statistics(copy(healthy))
    before = accuracy(stale, x_test, y_test)
    report = bn_keras.diagnose(stale, (x_test, y_test))
    finding = report.findings[0]
    assert (finding.code, finding.severity) == ("statistics-mismatch", "error")
    assert len(finding.layers) == 2
    assert finding.evidence["before"] == pytest.approx(before)
    assert finding.evidence["after"] > before + 0.1
    fixed = report.fix()
    assert fixed is not stale
    assert accuracy(fixed, x_test, y_test) == pytest.approx(
        report.summary["after"]
    )
    assert report.summary["after"] > 0.9
    assert accuracy(stale, x_test, y_test) == before  # left as it was
    # The fix is recalibration: the statistics recalibrate computes.
    bn_keras.recalibrate(stale, x_test, batch_size=32)
    for ours, reference in zip(
        bn_keras.find_batchnorm(fixed), bn_keras.find_batchnorm(stale)
    ):
        np.testing.assert_allclose(
            ours.moving_variance, reference.moving_variance, rtol=1e-5
        )


def test_inputs_on_another_scale(digits, healthy):
    _, x_test, _, y_test = digits
    report = bn_keras.diagnose(healthy, (x_test * 16.0, y_test))
    finding = report.findings[0]
    assert (finding.code, finding.severity) == (
        "preprocessing-mismatch",
        "error",
    )
    assert finding.evidence["scale_factor"] == pytest.approx(16.0, rel=0.1)
    rescaled = finding.evidence["rescaled"]
    assert rescaled["after"] > rescaled["before"] + 0.1
    # Not hidden by recalibration: fix() leaves the statistics.
    assert "statistics-mismatch" not in codes(report)
    assert report.fixes == []
    fixed = report.fix()
    np.testing.assert_array_equal(
        fixed.predict(x_test, verbose=0), healthy.predict(x_test, verbose=0)
    )


def test_small_training_batches(digits):
    _, x_test, _, y_test = digits
    model = trained(digits, epochs=2, batch_size=2)
    report = bn_keras.diagnose(model, (x_test, y_test), batch_size=2)
    finding = next(
        f for f in report.findings if f.code == "noisy-batch-statistics"
    )
    assert finding.severity in ("error", "warning")
    assert finding.evidence["disagreement"] > 0.1
    assert finding.evidence["batch_size"] == 2
    # Shuffled batches of 2 spread as random ones do: too small, not
    # unshuffled.
    assert finding.evidence["random_batches"] is True
    assert finding.remedy.startswith("Train with larger batches")
    # At the batch size of a healthy model, the modes agree.
    healthy_report = bn_keras.diagnose(model, (x_test, y_test), batch_size=256)
    assert "noisy-batch-statistics" not in codes(healthy_report)


def test_nonfinite_statistics_are_repaired(digits, healthy):
    _, x_test, _, y_test = digits
    broken = copy(healthy)
    layer = bn_keras.find_batchnorm(broken)[1]
    variance = layer.moving_variance.numpy()
    variance[3] = np.nan
    layer.moving_variance.assign(variance)
    report = bn_keras.diagnose(broken, (x_test, y_test))
    assert codes(report) == {"nonfinite-statistics": "error"}
    finding = report.findings[0]
    assert finding.layers == (layer.name,)
    assert finding.evidence["nonfinite"] == {layer.name: {"moving_variance": 1}}
    assert_fixed_as_healthy(report, healthy, x_test, y_test)


def test_collapsed_variance_is_repaired(digits, healthy):
    _, x_test, _, y_test = digits
    broken = copy(healthy)
    layer = bn_keras.find_batchnorm(broken)[0]
    variance = layer.moving_variance.numpy()
    variance[:20] = 0.0
    layer.moving_variance.assign(variance)
    report = bn_keras.diagnose(broken, (x_test, y_test))
    assert codes(report) == {"collapsed-variance": "error"}
    evidence = report.findings[0].evidence["collapsed_channels"]
    assert evidence == {layer.name: [20, 64]}
    assert_fixed_as_healthy(report, healthy, x_test, y_test)


def test_dead_channels_are_information(digits, healthy):
    _, x_test, _, y_test = digits
    model = copy(healthy)
    layer = bn_keras.find_batchnorm(model)[0]
    gamma = layer.gamma.numpy()
    gamma[:5] = 0.0
    layer.gamma.assign(gamma)
    report = bn_keras.diagnose(model, (x_test, y_test))
    assert report.ok
    assert codes(report) == {"dead-channels": "info"}
    assert report.findings[0].evidence["dead_channels"] == {layer.name: [5, 64]}


def test_structure(digits):
    _, x_test, _, y_test = digits
    inputs = keras.Input((64,))
    h = L.Dense(32, name="with_bias")(inputs)
    h = L.BatchNormalization(name="bn_1")(h)
    h = L.Dropout(0.2, name="drop")(L.ReLU()(h))
    h = L.BatchNormalization(name="bn_2")(h)
    h = L.Dense(10, use_bias=False, name="logits")(h)
    h = L.BatchNormalization(name="bn_3")(h)
    model = keras.Model(inputs, L.Softmax(name="probabilities")(h))
    report = bn_keras.diagnose(model, (x_test, y_test))
    found = {f.code: f for f in report.findings}
    assert found["bias-before-batchnorm"].evidence["pairs"] == [
        ["with_bias", "bn_1"]
    ]
    assert found["dropout-before-batchnorm"].evidence["pairs"] == [
        ["drop", "bn_2"]
    ]
    assert found["batchnorm-before-output"].layers == ("bn_3",)
    for code in (
        "bias-before-batchnorm",
        "dropout-before-batchnorm",
        "batchnorm-before-output",
    ):
        assert found[code].severity == "info"


def test_the_report_reads_in_120_columns_and_as_json(digits):
    _, x_test, _, y_test = digits
    stale = trained(digits, epochs=1, momentum=0.999)
    report = bn_keras.diagnose(stale, (x_test, y_test))
    text = str(report)
    assert max(len(line) for line in text.splitlines()) <= 120
    assert "statistics-mismatch" in text and "Remedy:" in text
    assert "report.fix() sets precise statistics" in text
    assert "--fix OUT.keras sets" in report.text(fix="--fix OUT.keras")
    loaded = json.loads(report.to_json())
    assert loaded["ok"] is False
    assert loaded["findings"][0]["code"] == report.findings[0].code
    assert loaded["summary"]["samples"] == len(x_test)


def test_an_untrained_model_is_named_and_its_batch_noise_is_information(
    digits,
):
    _, x_test, _, y_test = digits
    keras.utils.set_random_seed(0)
    report = bn_keras.diagnose(mlp(), (x_test, y_test))
    assert any("looks untrained" in note for note in report.summary["notes"])
    assert "looks untrained" in str(report)
    # Its training-mode predictions differ from inference (a quarter of
    # them at batch 32), which says nothing of its training batch size.
    noisy = next(
        f for f in report.findings if f.code == "noisy-batch-statistics"
    )
    assert noisy.severity == "info" and noisy.evidence["disagreement"] > 0.05
    # Its initial statistics are no finding when precise ones predict no
    # better: no story of frozen layers fine-tuned on top of them.
    assert ("statistics-mismatch", "info") not in {
        (f.code, f.severity) for f in report.findings
    }


def test_statistics_never_updated_are_no_input_scale(digits, healthy):
    _, x_test, _, y_test = digits
    stale = initial_statistics(copy(healthy))
    report = bn_keras.diagnose(stale, (x_test * 16.0, y_test))
    assert "preprocessing-mismatch" not in codes(report)
    assert codes(report)["statistics-mismatch"] == "error"
    assert not any("untrained" in n for n in report.summary["notes"])


def test_collapsed_variance_is_judged_by_its_own_impact(digits, healthy):
    _, x_test, _, y_test = digits
    broken = copy(healthy)
    first, second = bn_keras.find_batchnorm(broken)
    variance = first.moving_variance.numpy()
    variance[:3] = 0.0
    first.moving_variance.assign(variance)
    second.moving_mean.assign(np.zeros(second.moving_mean.shape))
    second.moving_variance.assign(np.ones(second.moving_variance.shape))
    report = bn_keras.diagnose(broken, (x_test, y_test))
    found = {f.code: f for f in report.findings}
    assert found["statistics-mismatch"].layers == (second.name,)
    collapsed = found["collapsed-variance"]
    # Its figures: precise statistics in the collapsed layer alone.
    alone = copy(broken)
    fixed_first = bn_keras.find_batchnorm(report.fix())[0]
    bn_keras.find_batchnorm(alone)[0].moving_variance.assign(
        fixed_first.moving_variance
    )
    bn_keras.find_batchnorm(alone)[0].moving_mean.assign(
        fixed_first.moving_mean
    )
    assert collapsed.evidence["after"] == pytest.approx(
        accuracy(alone, x_test, y_test)
    )
    assert collapsed.evidence["after"] < report.summary["after"]


def test_class_sorted_batches_are_not_random(digits, healthy):
    """Batches of one or two classes each: their means spread more than
    random batches' can, and the remedy starts with shuffling."""
    _, x_test, _, y_test = digits
    order = np.argsort(y_test, kind="stable")
    report = bn_keras.diagnose(healthy, (x_test[order], y_test[order]))
    noisy = next(
        f for f in report.findings if f.code == "noisy-batch-statistics"
    )
    assert noisy.evidence["random_batches"] is False
    assert noisy.remedy.startswith("Shuffle the training data")
    # The same data shuffled: a healthy model trained at 32 agrees.
    assert "noisy-batch-statistics" not in codes(
        bn_keras.diagnose(healthy, (x_test, y_test))
    )
