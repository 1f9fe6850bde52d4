"""examples/finetune_small_batches.py runs in quick mode; each setting's
model is the pretrained one with the BN it names."""

import importlib.util
from pathlib import Path

import keras
import numpy as np
import pytest

import bn_keras

SCRIPT = (
    Path(__file__).resolve().parents[2]
    / "examples"
    / "finetune_small_batches.py"
)


def load_example():
    spec = importlib.util.spec_from_file_location(
        "finetune_small_batches", SCRIPT
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.tensorflow_only
def test_finetune_small_batches_quick(capsys):
    example = load_example()
    summary = example.main(["--quick"])
    printed = capsys.readouterr().out

    assert list(summary) == [
        "BN as is",
        "freeze_batchnorm",
        "convert to renorm",
    ]
    for result in summary.values():
        (row,) = result["per_seed"]
        assert 0.0 < row["val_accuracy"] <= 1.0
        assert row["gap"] == pytest.approx(
            row["train_training_mode"] - row["train_inference"]
        )
    # Frozen BN runs in inference mode in training too (one image of the
    # 40 would make a gap of 0.025; evaluate's accuracy is a float32).
    assert summary["freeze_batchnorm"]["gap"] == pytest.approx(0, abs=1e-6)
    assert "fine-tuned on 40 images of 5-9 (batches of 4" in printed
    assert "mean  convert to renorm" in printed
    # The gap is bn_keras.models.train_inference_gap's: no copy here.
    assert not hasattr(example, "training_mode_accuracy")


def test_each_setting_starts_from_the_pretrained_features():
    example = load_example()
    pretrained = example.build_cnn(seed=0)
    rng = np.random.default_rng(0)
    for bn in bn_keras.find_batchnorm(pretrained):
        n = bn.moving_mean.shape[0]
        bn.moving_mean.assign(rng.normal(size=n).astype("float32"))
        bn.moving_variance.assign(rng.uniform(0.5, 2, n).astype("float32"))
    x = rng.normal(size=(3, 8, 8, 1)).astype("float32")
    features = keras.Model(pretrained.input, pretrained.layers[-2].output)
    expected = features(x)
    heads = []
    for setting in example.SETTINGS:
        model = example.finetune_model(pretrained, setting, seed=0)
        found = bn_keras.find_batchnorm(model)
        kinds = {type(bn).__name__ for bn in found}
        frozen = {bn.trainable is False for bn in found}
        assert (kinds, frozen) == {
            "BN as is": ({"BatchNormalization"}, {False}),
            "freeze_batchnorm": ({"BatchNormalization"}, {True}),
            "convert to renorm": ({"BatchRenormalization"}, {False}),
        }[setting]
        body = keras.Model(model.input, model.layers[-2].output)
        np.testing.assert_allclose(body(x), expected, rtol=1e-5, atol=1e-5)
        heads.append(model.get_layer("head").get_weights()[0])
    np.testing.assert_array_equal(heads[0], heads[1])
    np.testing.assert_array_equal(heads[0], heads[2])
    assert not np.allclose(
        heads[0], pretrained.get_layer("head").get_weights()[0]
    )
