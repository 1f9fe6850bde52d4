"""Every model function on Keras's own architectures (`keras.applications`).

`weights=None` (nothing is downloaded), small inputs (32x32; Xception needs
at least 71x71), 10 classes, logits. Each architecture is built once for
the module; its BN layers get random statistics, so that folding and
converting have something to get wrong. Marked slow: the file takes about
a minute of CPU time (62 s user; 110 s wall on 2 cores shared with other
jobs).
"""

import keras
import numpy as np
import pytest

import bn_keras
from tests.cli.helpers import run_cli

pytestmark = pytest.mark.slow

# name: (constructor arguments, input size, number of BN layers)
ARCHITECTURES = {
    "ResNet50": ({}, 32, 53),
    "MobileNetV2": ({"alpha": 0.35}, 32, 52),
    "MobileNetV3Small": ({"alpha": 0.75}, 32, 34),
    "EfficientNetB0": ({}, 32, 49),
    "DenseNet121": ({}, 32, 121),
    "Xception": ({}, 71, 40),
    "ConvNeXtTiny": ({}, 32, 0),
    "VGG16": ({}, 32, 0),
}


def _build(name):
    kwargs, size, _ = ARCHITECTURES[name]
    model = getattr(keras.applications, name)(
        weights=None,
        input_shape=(size, size, 3),
        classes=10,
        classifier_activation=None,
        **kwargs,
    )
    rng = np.random.default_rng(0)
    for bn in bn_keras.find_batchnorm(model):
        n = bn.moving_mean.shape[0]
        values = {
            "gamma": rng.uniform(0.8, 1.2, n),
            "beta": rng.normal(0.0, 0.1, n),
            "moving_mean": rng.normal(0.0, 0.1, n),
            "moving_variance": rng.uniform(0.5, 2.0, n),
        }
        for variable in bn.weights:
            variable.assign(values[variable.name].astype("float32"))
    return model


@pytest.fixture(scope="module")
def built():
    """`built(name)`: the architecture, built once for the module."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = _build(name)
        return cache[name]

    return get


def _inputs(name, seed=0):
    size = ARCHITECTURES[name][1]
    rng = np.random.default_rng(seed)
    return rng.uniform(0.0, 255.0, size=(2, size, size, 3)).astype("float32")


def _predict(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def _isinstance_scan(layer):
    found = []
    for sub in getattr(layer, "layers", []):
        if isinstance(sub, keras.layers.BatchNormalization):
            found.append(sub)
        else:
            found.extend(_isinstance_scan(sub))
    return found


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_find_batchnorm_equals_an_isinstance_scan(built, name):
    model = built(name)
    found = bn_keras.find_batchnorm(model)
    assert found == _isinstance_scan(model)
    assert len(found) == ARCHITECTURES[name][2]


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_fold_batchnorm_keeps_the_logits(built, name):
    model = built(name)
    folded, report = bn_keras.fold_batchnorm(model, return_report=True)
    total = ARCHITECTURES[name][2]
    assert len(report["folded"]) + len(report["kept"]) == total
    assert len(bn_keras.find_batchnorm(folded)) == len(report["kept"])
    if name == "DenseNet121":  # 62 BN follow a concatenation
        assert len(report["folded"]) == 59
        assert {e["reason"].split("'")[0] for e in report["kept"]} == {
            "it follows "
        }
    elif total:
        assert report["kept"] == []
    x = _inputs(name)
    np.testing.assert_allclose(
        _predict(folded, x), _predict(model, x), rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_convert_batchnorm_keeps_inference(built, name):
    model = built(name)
    total = ARCHITECTURES[name][2]
    x = _inputs(name)
    expected = _predict(model, x)
    converted = {"renorm": bn_keras.convert_batchnorm(model, "renorm")}
    if total:  # without BN, each conversion is the same copy
        converted["ghost"] = bn_keras.convert_batchnorm(model, "ghost")
        with pytest.warns(UserWarning, match="dropped renorm=True from"):
            converted["keras"] = bn_keras.convert_batchnorm(
                converted["renorm"], "keras"
            )
    classes = {
        "renorm": bn_keras.layers.BatchRenormalization,
        "ghost": bn_keras.layers.GhostBatchNormalization,
        "keras": keras.layers.BatchNormalization,
    }
    for kind, new in converted.items():
        layers = bn_keras.find_batchnorm(new)
        assert len(layers) == total
        assert all(type(bn) is classes[kind] for bn in layers)
        np.testing.assert_allclose(
            _predict(new, x), expected, rtol=1e-5, atol=1e-5, err_msg=kind
        )


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_inspect_prints_one_row_per_batchnorm(built, name, tmp_path, capsys):
    model = built(name)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    status, out, err = run_cli(capsys, "inspect", path)
    assert status == 0, err
    total = ARCHITECTURES[name][2]
    assert f"parameters, {total} batch normalization layer" in out
    numbers = [
        int(line.split()[0])
        for line in out.splitlines()
        if line[:5].strip().isdigit() and ": " not in line
    ]
    assert numbers == list(range(1, total + 1))


def test_insert_batchnorm_on_vgg16_keeps_the_kernels(built):
    model = built("VGG16")
    new = bn_keras.insert_batchnorm(model)
    convs = [
        layer
        for layer in model.layers
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))
    ]
    for layer in convs:
        for old, kept in zip(
            layer.get_weights(), new.get_layer(layer.name).get_weights()
        ):
            np.testing.assert_array_equal(kept, old)
    # Every Conv2D and Dense gets a BN but the logits.
    added = bn_keras.find_batchnorm(new)
    assert [bn.name for bn in added] == [
        f"{layer.name}_bn" for layer in convs[:-1]
    ]
    # With identity statistics, the new BN layers change nothing.
    for bn in added:
        n = bn.moving_mean.shape[0]
        bn.moving_variance.assign(np.full(n, 1.0 - bn.epsilon, "float32"))
    x = _inputs("VGG16")
    np.testing.assert_allclose(
        _predict(new, x), _predict(model, x), rtol=1e-4, atol=1e-6
    )


def test_head_on_a_nested_mobilenetv2():
    # Transfer learning: the backbone is a layer of the user's model.
    backbone = keras.applications.MobileNetV2(
        weights=None, input_shape=(32, 32, 3), include_top=False, alpha=0.35
    )
    inputs = keras.Input((32, 32, 3), name="image")
    h = keras.layers.GlobalAveragePooling2D(name="gap")(backbone(inputs))
    h = keras.layers.Dense(8, use_bias=False, name="fc")(h * 0.5)
    h = keras.layers.BatchNormalization(name="fc_bn")(h)
    model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(h))
    rng = np.random.default_rng(1)
    for bn in bn_keras.find_batchnorm(model):
        n = bn.moving_mean.shape[0]
        bn.moving_mean.assign(rng.normal(0, 0.1, n).astype("float32"))
        bn.moving_variance.assign(rng.uniform(0.5, 2, n).astype("float32"))
    x = _inputs("MobileNetV2")
    expected = _predict(model, x)
    folded, report = bn_keras.fold_batchnorm(model, return_report=True)
    assert len(report["folded"]) == 53 and report["kept"] == []
    assert report["folded"][1] == {
        "layer": f"{backbone.name}/Conv1",
        "batchnorm": f"{backbone.name}/bn_Conv1",
    }
    np.testing.assert_allclose(
        _predict(folded, x), expected, rtol=1e-4, atol=1e-4
    )
    renorm = bn_keras.convert_batchnorm(model, "renorm")
    assert {type(bn) for bn in bn_keras.find_batchnorm(renorm)} == {
        bn_keras.layers.BatchRenormalization
    }
    np.testing.assert_allclose(
        _predict(renorm, x), expected, rtol=1e-5, atol=1e-5
    )
