"""Tests of `bn_keras.convert_batchnorm`."""

import json
import re
import warnings

import keras
import numpy as np
import pytest

import bn_keras
from tests.layer_test_case import randomize_weights
from tests.layer_test_case import sample_inputs
from tests.layer_test_case import to_numpy

TOLERANCE = 1e-5


def _conv_model(make_bn=keras.layers.BatchNormalization):
    """Conv - BN - ReLU - pooling - Dense - BN - Dense."""
    inputs = keras.Input((6, 6, 3), name="image")
    h = keras.layers.Conv2D(4, 3, use_bias=False, name="conv")(inputs)
    h = keras.layers.ReLU(name="relu")(make_bn(name="conv_bn")(h))
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    h = make_bn(name="gap_bn")(keras.layers.Dense(5, name="fc")(h))
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(h))


def _random_bn(model, seed=0):
    for i, layer in enumerate(bn_keras.find_batchnorm(model)):
        randomize_weights(layer, seed=seed + i)


def _values(layer):
    return {v.name: to_numpy(v) for v in layer.weights}


def _assert_same_predictions(new, model, x, tolerance=TOLERANCE):
    np.testing.assert_allclose(
        to_numpy(new(x, training=False)),
        to_numpy(model(x, training=False)),
        rtol=tolerance,
        atol=tolerance,
    )


X = sample_inputs((4, 6, 6, 3))

TARGETS = {
    "renorm": bn_keras.layers.BatchRenormalization,
    "ghost": bn_keras.layers.GhostBatchNormalization,
    "batch": bn_keras.layers.BatchNormalization,
    "keras": keras.layers.BatchNormalization,
}


@pytest.mark.parametrize("source", ["keras", "ours"])
@pytest.mark.parametrize("target", list(TARGETS))
def test_each_target_keeps_weights_and_predictions(source, target):
    make_bn = {
        "keras": keras.layers.BatchNormalization,
        "ours": bn_keras.layers.BatchNormalization,
    }[source]
    model = _conv_model(make_bn)
    _random_bn(model)
    converted = bn_keras.convert_batchnorm(model, target)
    for name in ("conv_bn", "gap_bn"):
        old, new = model.get_layer(name), converted.get_layer(name)
        assert type(new) is TARGETS[target]
        assert new is not old and type(old) is make_bn
        old_values, new_values = _values(old), _values(new)
        for weight in ("gamma", "beta", "moving_mean", "moving_variance"):
            np.testing.assert_array_equal(
                new_values[weight], old_values[weight]
            )
    for name in ("conv", "fc", "logits"):
        assert converted.get_layer(name) is not model.get_layer(name)
        np.testing.assert_array_equal(
            converted.get_layer(name).get_weights()[0],
            model.get_layer(name).get_weights()[0],
        )
    _assert_same_predictions(converted, model, X)


def test_renorm_weights_start_from_the_moving_statistics():
    model = _conv_model()
    _random_bn(model)
    converted = bn_keras.convert_batchnorm(model, "renorm")
    old = _values(model.get_layer("gap_bn"))
    new = _values(converted.get_layer("gap_bn"))
    stddev = np.sqrt(old["moving_variance"].astype("float64") + 1e-3)
    np.testing.assert_allclose(new["moving_stddev"], stddev, rtol=1e-6)
    np.testing.assert_allclose(new["renorm_stddev"], stddev, rtol=1e-6)
    np.testing.assert_array_equal(new["renorm_mean"], old["moving_mean"])
    assert new["renorm_step"] == 0
    assert converted.get_layer("gap_bn").renorm_schedule is not None


def test_renorm_conversion_trains_in_small_batches():
    # A training step of the converted model uses the renorm weights, and
    # its schedule counts the steps from the start.
    model = _conv_model()
    converted = bn_keras.convert_batchnorm(model, "renorm")
    converted.compile(optimizer="sgd", loss="mse")
    y = np.zeros((4, 3), "float32")
    converted.fit(X, y, batch_size=2, epochs=1, verbose=0)
    assert int(to_numpy(converted.get_layer("conv_bn").renorm_step)) == 2
    assert int(to_numpy(converted.get_layer("gap_bn").renorm_step)) == 2


def test_settings_kept_from_each_layer_and_from_the_template():
    inputs = keras.Input((3, 5, 5))
    h = keras.layers.Conv2D(4, 3, data_format="channels_first")(inputs)
    bn = keras.layers.BatchNormalization(
        axis=1,
        momentum=0.9,
        epsilon=1e-5,
        center=False,
        gamma_regularizer="l2",
        name="bn",
    )
    model = keras.Model(inputs, bn(h))
    bn.trainable = False
    template = bn_keras.layers.GhostBatchNormalization(
        virtual_batch_size=8, momentum=0.5, epsilon=0.1, axis=-1, center=True
    )
    new = bn_keras.convert_batchnorm(model, template).get_layer("bn")
    assert type(new) is bn_keras.layers.GhostBatchNormalization
    assert (new.virtual_batch_size, new.momentum) == (8, 0.5)
    # What the weights mean comes from the converted layer.
    assert (new.axis, new.epsilon, new.center, new.scale) == (
        1,
        1e-5,
        False,
        True,
    )
    assert new.trainable is False
    assert new.gamma_regularizer is None  # the template's
    by_name = bn_keras.convert_batchnorm(model, "renorm").get_layer("bn")
    assert by_name.momentum == 0.9  # a name sets no momentum: kept
    assert isinstance(by_name.gamma_regularizer, keras.regularizers.L2)


def test_dict_specification_and_overrides():
    model = _conv_model()
    _random_bn(model)
    ghost = bn_keras.convert_batchnorm(model, {"virtual_batch_size": 2})
    layer = ghost.get_layer("conv_bn")
    assert type(layer) is bn_keras.layers.BatchNormalization
    assert layer.virtual_batch_size == 2
    clipping = bn_keras.layers.RenormClipping(warmup_steps=0)
    renorm = bn_keras.convert_batchnorm(
        model, "renorm", renorm_clipping=clipping, epsilon=1e-2, momentum=0.5
    )
    layer = renorm.get_layer("gap_bn")
    assert layer.renorm_schedule.warmup_steps == 0
    assert (layer.epsilon, layer.momentum) == (1e-2, 0.5)
    # renorm's statistics use the new epsilon.
    variance = to_numpy(model.get_layer("gap_bn").moving_variance)
    np.testing.assert_allclose(
        to_numpy(layer.moving_stddev), np.sqrt(variance + 1e-2), rtol=1e-6
    )


@pytest.mark.tensorflow_only
def test_synchronized():
    model = _conv_model()
    _random_bn(model)
    converted = bn_keras.convert_batchnorm(model, {"synchronized": True})
    assert converted.get_layer("conv_bn").synchronized is True
    _assert_same_predictions(converted, model, X)


def test_keras_target_drops_ghost_and_renorm_with_a_warning(tmp_path):
    inputs = keras.Input((4,))
    h = bn_keras.layers.GhostBatchNormalization(
        virtual_batch_size=8, name="ghost"
    )(keras.layers.Dense(4, name="d1")(inputs))
    h = bn_keras.layers.BatchRenormalization(name="renorm")(
        keras.layers.Dense(4, name="d2")(h)
    )
    h = bn_keras.layers.BatchNormalization(name="plain")(h)
    model = keras.Model(inputs, h)
    _random_bn(model)
    with pytest.warns(UserWarning) as record:
        converted = bn_keras.convert_batchnorm(model, "keras")
    messages = [str(w.message) for w in record if w.category is UserWarning]
    assert messages == [
        "convert_batchnorm: keras.layers.BatchNormalization has no ghost "
        "batches and no renorm schedule; dropped virtual_batch_size=8 from "
        "'ghost' and renorm=True from 'renorm'. Their weights are kept: "
        "inference is unchanged."
    ]
    for bn in bn_keras.find_batchnorm(converted):
        assert type(bn) is keras.layers.BatchNormalization
        assert bn.renorm is False
    x = sample_inputs((5, 4))
    _assert_same_predictions(converted, model, x)
    # The saved model names no bn_keras class: it loads without bn-keras.
    path = tmp_path / "keras_only.keras"
    converted.save(path)
    assert "bn_keras" not in json.dumps(converted.get_config())
    _assert_same_predictions(keras.saving.load_model(path), model, x)


def test_no_warning_for_conversions_to_bn_keras_layers():
    inputs = keras.Input((4,))
    outputs = bn_keras.layers.BatchRenormalization(name="renorm")(inputs)
    model = keras.Model(inputs, outputs)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        new = bn_keras.convert_batchnorm(model, "batch")
    assert new.get_layer("renorm").renorm is False


def test_layers_selects_by_name_nested_included():
    inner = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(5, name="inner_dense"),
            keras.layers.BatchNormalization(name="inner_bn"),
        ],
        name="inner",
    )
    inputs = keras.Input((6, 6, 3))
    model = keras.Model(inputs, inner(_conv_model()(inputs)[:, :1] * 5.0))
    new = bn_keras.convert_batchnorm(model, "ghost", layers=["inner_bn"])
    assert [type(bn).__name__ for bn in bn_keras.find_batchnorm(new)] == [
        "BatchNormalization",
        "BatchNormalization",
        "GhostBatchNormalization",
    ]
    single = bn_keras.convert_batchnorm(model, "ghost", layers="conv_bn")
    assert [type(bn).__name__ for bn in bn_keras.find_batchnorm(single)] == [
        "GhostBatchNormalization",
        "BatchNormalization",
        "BatchNormalization",
    ]


def test_bn_inside_a_bnblock():
    inputs = keras.Input((4,))
    block = bn_keras.layers.BNBlock(
        keras.layers.Dense(6), activation="relu", name="block"
    )
    model = keras.Model(inputs, keras.layers.Dense(2)(block(inputs)))
    _random_bn(model)
    new = bn_keras.convert_batchnorm(model, "renorm")
    new_block = new.get_layer("block")
    assert type(new_block.normalization) is bn_keras.layers.BatchRenormalization
    assert new_block.normalization.name == block.normalization.name
    np.testing.assert_array_equal(
        to_numpy(new_block.layer.kernel), to_numpy(block.layer.kernel)
    )
    _assert_same_predictions(new, model, sample_inputs((3, 4)))


def test_bn_inside_a_wrapper_is_refused_with_its_name():
    inputs = keras.Input((3, 4))
    wrapped = keras.layers.TimeDistributed(
        keras.layers.BatchNormalization(name="inner_bn"), name="td"
    )
    outputs = keras.layers.BatchNormalization(name="bn")(wrapped(inputs))
    model = keras.Model(inputs, outputs)
    with pytest.raises(TypeError) as info:
        bn_keras.convert_batchnorm(model, "renorm")
    assert str(info.value).startswith(
        "Cannot convert the batch normalization layer 'inner_bn' inside 'td' "
        "(TimeDistributed)"
    )
    assert str(info.value).endswith("Received: layer=td")
    # Left out by name, the other BN converts.
    new = bn_keras.convert_batchnorm(model, "renorm", layers=["bn"])
    assert type(new.get_layer("bn")) is bn_keras.layers.BatchRenormalization


def test_sequential_and_compiled_model():
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(3, name="dense"),
            keras.layers.BatchNormalization(name="bn"),
        ]
    )
    model.compile(optimizer="adam", loss="mse")
    _random_bn(model)
    new = bn_keras.convert_batchnorm(model, "ghost")
    assert isinstance(new, keras.Sequential)
    assert new.compiled and new.loss == "mse"
    assert new.optimizer is not model.optimizer
    _assert_same_predictions(new, model, sample_inputs((3, 4)))


def test_mixed_precision_policy_is_kept():
    keras.config.set_dtype_policy("mixed_float16")
    model = _conv_model()
    keras.config.set_dtype_policy("float32")
    _random_bn(model)
    new = bn_keras.convert_batchnorm(model, "renorm")
    layer = new.get_layer("conv_bn")
    assert layer.dtype_policy.name == "mixed_float16"
    assert {v.dtype for v in layer.weights if v.name != "renorm_step"} == {
        "float32"
    }
    _assert_same_predictions(new, model, X, tolerance=1e-2)


def test_converted_model_saves_and_loads(tmp_path):
    model = _conv_model()
    _random_bn(model)
    new = bn_keras.convert_batchnorm(model, "renorm")
    path = tmp_path / "renorm.keras"
    new.save(path)
    loaded = keras.saving.load_model(path)
    assert (
        type(loaded.get_layer("conv_bn"))
        is bn_keras.layers.BatchRenormalization
    )
    for name in ("conv_bn", "gap_bn"):
        for key, value in _values(new.get_layer(name)).items():
            np.testing.assert_array_equal(
                _values(loaded.get_layer(name))[key], value
            )
    _assert_same_predictions(loaded, model, X)


def test_the_original_model_is_untouched():
    model = _conv_model()
    _random_bn(model)
    before = [to_numpy(w).copy() for w in model.weights]
    config = model.get_config()
    new = bn_keras.convert_batchnorm(model, "renorm")
    new.get_layer("conv_bn").moving_mean.assign(np.full(4, 9.0, "float32"))
    assert model.get_config() == config
    for old, now in zip(before, model.weights):
        np.testing.assert_array_equal(to_numpy(now), old)


def test_unbuilt_sequential_model():
    model = keras.Sequential(
        [keras.layers.Dense(3), keras.layers.BatchNormalization(name="bn")]
    )
    new = bn_keras.convert_batchnorm(model, "ghost")
    assert type(new.get_layer("bn")) is bn_keras.layers.GhostBatchNormalization
    assert not new.get_layer("bn").built
    assert new(np.ones((2, 4), "float32")).shape == (2, 3)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (
            {"normalization": "group"},
            ValueError,
            "Unknown normalization. Valid names: 'batch', 'ghost', 'keras', "
            "'renorm'. Received: normalization='group'",
        ),
        (
            {"normalization": 3},
            TypeError,
            "Received: normalization=3",
        ),
        (
            {"normalization": keras.layers.LayerNormalization()},
            TypeError,
            "Received: normalization=<LayerNormalization",
        ),
        (
            {"normalization": "renorm", "axis": 1},
            ValueError,
            "cannot be overridden. Received: axis=1",
        ),
        (
            {"normalization": "renorm", "name": "x", "center": False},
            ValueError,
            "Received: center=False, name='x'",
        ),
        (
            {"normalization": "ghost", "virtual_batch_size": 0},
            ValueError,
            "Received: virtual_batch_size=0",
        ),
        (
            {"normalization": "renorm", "rmax": 3},
            ValueError,
            "Unrecognized keyword arguments passed to BatchRenormalization: "
            "{'rmax': 3}",
        ),
        (
            {"normalization": "renorm", "layers": ["conv_bn", "conv"]},
            ValueError,
            "Argument `layers` names no batch normalization layer of the "
            "model: ['conv']. Its BN layers are ['conv_bn', 'gap_bn']. "
            "Received: layers=['conv_bn', 'conv']",
        ),
        (
            {"normalization": "renorm", "layers": 3},
            TypeError,
            "Received: layers=3",
        ),
    ],
)
def test_errors(kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        bn_keras.convert_batchnorm(_conv_model(), **kwargs)


def test_subclassed_model_is_refused():
    class Net(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(TypeError, match="^`convert_batchnorm` rewrites"):
        bn_keras.convert_batchnorm(Net(name="net"), "renorm")


def test_cumulative_statistics_to_keras(tmp_path):
    """Keras's layer has no `momentum=None`: the converted layer gets
    Keras's default momentum, with the warning, and the statistics (the
    counter aside) carry over; a bn-keras target keeps `None` and the
    counter."""
    model = bn_keras.insert_batchnorm(
        keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="d")]),
        input_batchnorm="renorm",
    )
    x = sample_inputs((16, 4), shift=3.0)
    model(x, training=True)
    model(x[::-1] * 2.0, training=True)
    with pytest.warns(UserWarning, match=re.escape(
        "dropped renorm=True from 'input_layer_bn' and momentum=None "
        "(now 0.99) from 'input_layer_bn'."
    )):
        converted = bn_keras.convert_batchnorm(model, "keras")
    (bn,) = bn_keras.find_batchnorm(converted)
    assert type(bn) is keras.layers.BatchNormalization and bn.momentum == 0.99
    _assert_same_predictions(converted, model, x)
    kept = bn_keras.convert_batchnorm(model, "batch")
    (bn,) = bn_keras.find_batchnorm(kept)
    assert bn.momentum is None and not bn.renorm
    assert int(to_numpy(bn.num_batches_tracked)) == 2
    _assert_same_predictions(kept, model, x)


@pytest.mark.parametrize("target", ["renorm", "keras"])
def test_no_deprecation_warning_per_weight(target):
    """NumPy 2 warns when `np.array()` reads a Keras variable; reading the
    weights of a compiled model's BN layers must not."""
    model = _conv_model()
    model.compile(keras.optimizers.Adam(), "mse")
    _random_bn(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        new = bn_keras.convert_batchnorm(model, target)
    _assert_same_predictions(new, model, X)
