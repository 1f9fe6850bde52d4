"""examples/renorm_small_batches.py runs in quick mode; the gap it measures
(`bn_keras.models.train_inference_gap`) is the one written out, and leaves
the model as it was."""

import importlib.util
from pathlib import Path

import keras
import numpy as np
import pytest

import bn_keras

SCRIPT = (
    Path(__file__).resolve().parents[2] / "examples" / "renorm_small_batches.py"
)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def load_example():
    spec = importlib.util.spec_from_file_location(
        "renorm_small_batches", SCRIPT
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.tensorflow_only
def test_renorm_small_batches_quick(tmp_path, capsys):
    example = load_example()
    summary = example.main(["--quick", "--out", str(tmp_path)])
    printed = capsys.readouterr().out

    assert list(summary) == ["plain BN", "batch renorm"]
    for result in summary.values():
        (row,) = result["per_seed"]
        assert len(row["val_accuracy"]) == 1
        assert row["gap"] == pytest.approx(
            row["train_training_mode"] - row["train_inference"]
        )
        assert 0.0 < row["train_inference"] <= 1.0
        assert 0.0 < row["train_training_mode"] <= 1.0
        assert result["gap"] == pytest.approx(row["gap"])
    assert "batches of 4" in printed
    assert "mean  plain BN" in printed and "mean  batch renorm" in printed
    png = tmp_path / example.FIGURE_NAME
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    assert png.stat().st_size > 1000


@pytest.mark.parametrize(
    "normalization",
    [
        lambda: bn_keras.layers.BatchNormalization(),
        lambda: bn_keras.layers.BatchRenormalization(
            renorm_clipping=bn_keras.layers.RenormClipping(
                warmup_steps=0, rmax_steps=1, dmax_steps=1
            )
        ),
    ],
)
def test_the_gap_the_example_measures_leaves_the_model_as_it_was(
    normalization,
):
    """The example's gap is `bn_keras.models.train_inference_gap` on the
    training set in batches of 4: against a computation of our own, each
    batch normalized by its own statistics (renorm's r and d from the
    final state), the state put back after every batch."""
    example = load_example()
    model = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(4),
            normalization(),
            keras.layers.Dense(3),
        ]
    )
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, size=(16, 5)).astype("float32")
    y = rng.integers(0, 3, size=16)
    # A trained state: moving statistics and renorm's step moved on.
    model.compile("sgd", "sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    before = [v.numpy().copy() for v in model.non_trainable_variables]
    gap = bn_keras.models.train_inference_gap(
        model, (x, y), batch_size=example.BATCH_SIZE
    )
    after = [v.numpy() for v in model.non_trainable_variables]
    for old, new in zip(before, after):
        np.testing.assert_array_equal(old, new)
    correct = 0
    for start in range(0, 16, 4):
        saved = [v.numpy().copy() for v in model.non_trainable_variables]
        logits = model(x[start : start + 4], training=True)
        for variable, value in zip(model.non_trainable_variables, saved):
            variable.assign(value)
        correct += int(np.sum(np.argmax(logits, -1) == y[start : start + 4]))
    inference = np.mean(np.argmax(model.predict(x, verbose=0), -1) == y)
    assert gap["training"] == correct / 16
    assert gap["inference"] == pytest.approx(inference)
    assert gap["gap"] == pytest.approx(correct / 16 - inference)
    assert not hasattr(example, "training_mode_accuracy")  # one helper
