"""Tests of `bn_keras.insert_batchnorm`."""

import re

import keras
import numpy as np
import pytest

import bn_keras
from tests.layer_test_case import randomize_weights
from tests.layer_test_case import sample_inputs
from tests.layer_test_case import to_numpy

EPS = 1e-3


def _relu(x):
    return np.maximum(x, 0.0)


def _weights(layer):
    return {w.name: to_numpy(w) for w in layer.weights}


def _dense(layer, x):
    w = _weights(layer)
    return x @ w["kernel"] + w.get("bias", 0.0)


def _bn(layer, x, training):
    """BN written out: batch statistics (biased variance) or moving ones."""
    w = _weights(layer)
    if training:
        mean, variance = x.mean(axis=0), x.var(axis=0)
    else:
        mean, variance = w["moving_mean"], w["moving_variance"]
    gamma = w.get("gamma", 1.0)
    beta = w.get("beta", 0.0)
    return (x - mean) / np.sqrt(variance + EPS) * gamma + beta


def _mlp():
    return keras.Sequential(
        [
            keras.Input((4,), name="x"),
            keras.layers.Dense(6, activation="relu", name="h1"),
            keras.layers.Dense(5, activation="relu", name="h2"),
            keras.layers.Dense(2, name="out"),
        ],
        name="mlp",
    )


def _randomize_bn(model, seed=0):
    for i, layer in enumerate(bn_keras.find_batchnorm(model)):
        randomize_weights(layer, seed=seed + i)


MLP_LAYERS = {
    "layer-bn-act": ["h1", "h1_bn", "h1_act", "h2", "h2_bn", "h2_act", "out"],
    "layer-act-bn": ["h1", "h1_bn", "h2", "h2_bn", "out"],
    "bn-act-layer": [
        "h1",
        "h2_bn",
        "h2_act",
        "h2",
        "out_bn",
        "out_act",
        "out",
    ],
    "layer-act": ["h1", "h2", "out"],
}


def _mlp_by_hand(placement, model, x, training):
    get = model.get_layer
    if placement == "layer-bn-act":
        h = _relu(_bn(get("h1_bn"), _dense(get("h1"), x), training))
        h = _relu(_bn(get("h2_bn"), _dense(get("h2"), h), training))
        return _dense(get("out"), h)
    if placement == "layer-act-bn":
        h = _bn(get("h1_bn"), _relu(_dense(get("h1"), x)), training)
        h = _bn(get("h2_bn"), _relu(_dense(get("h2"), h)), training)
        return _dense(get("out"), h)
    if placement == "bn-act-layer":
        # BN, then the activation moved out of the layer before, before
        # each layer but the first (the model input has no activation).
        h = _dense(get("h1"), x)
        h = _dense(get("h2"), _relu(_bn(get("h2_bn"), h, training)))
        return _dense(get("out"), _relu(_bn(get("out_bn"), h, training)))
    h = _relu(_dense(get("h1"), x))
    return _dense(get("out"), _relu(_dense(get("h2"), h)))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("placement", list(MLP_LAYERS))
def test_placements_on_an_mlp_equal_computation_by_hand(placement, training):
    model = _mlp()
    new = bn_keras.insert_batchnorm(model, placement=placement)
    assert isinstance(new, keras.Sequential)
    assert [layer.name for layer in new.layers] == MLP_LAYERS[placement]
    _randomize_bn(new)
    x = sample_inputs((16, 4))
    expected = _mlp_by_hand(placement, new, x, training)
    np.testing.assert_allclose(
        to_numpy(new(x, training=training)), expected, rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("placement", list(MLP_LAYERS))
def test_weights_are_kept_and_the_original_is_unchanged(placement):
    model = _mlp()
    x = sample_inputs((8, 4))
    before = model.predict(x, verbose=0)
    weights = {layer.name: layer.get_weights() for layer in model.layers}
    new = bn_keras.insert_batchnorm(model, placement=placement)
    for name, values in weights.items():
        for a, b in zip(new.get_layer(name).get_weights(), values):
            np.testing.assert_array_equal(a, b)
        assert new.get_layer(name) is not model.get_layer(name)
    assert [layer.name for layer in model.layers] == ["h1", "h2", "out"]
    np.testing.assert_array_equal(model.predict(x, verbose=0), before)


def test_aliases_and_none():
    model = _mlp()
    names = lambda m: [layer.name for layer in m.layers]  # noqa: E731
    assert (
        names(bn_keras.insert_batchnorm(model, placement="before_activation"))
        == MLP_LAYERS["layer-bn-act"]
    )
    assert (
        names(bn_keras.insert_batchnorm(model, placement="pre_activation"))
        == MLP_LAYERS["bn-act-layer"]
    )
    assert names(bn_keras.insert_batchnorm(model, placement=None)) == [
        "h1",
        "h2",
        "out",
    ]


# -- residual functional model ------------------------------------------------


def _residual(data_format="channels_last"):
    shape = (8, 8, 3) if data_format == "channels_last" else (3, 8, 8)
    conv = dict(padding="same", data_format=data_format)
    inputs = keras.Input(shape, name="image")
    a = keras.layers.Conv2D(4, 3, activation="relu", name="c1", **conv)(inputs)
    b = keras.layers.Conv2D(4, 3, name="c2", **conv)(a)
    b = keras.layers.ReLU(name="r2")(b)
    b = keras.layers.Conv2D(4, 1, name="c3", **conv)(b)
    c = keras.layers.Add(name="add")([a, b])
    d = keras.layers.GlobalAveragePooling2D(
        name="gap", data_format=data_format
    )(c)
    outputs = keras.layers.Dense(3, name="logits")(d)
    return keras.Model(inputs, outputs, name="residual")


def _residual_by_hand(placement):
    """The expected model, layer by layer, with the names insert gives."""
    bn = lambda name: keras.layers.BatchNormalization(name=name)  # noqa: E731
    conv = lambda f, k, name, act=None: keras.layers.Conv2D(  # noqa: E731
        f, k, padding="same", activation=act, name=name
    )
    inputs = keras.Input((8, 8, 3), name="image")
    x = keras.layers.BatchNormalization(
        center=False, scale=False, name="image_bn"
    )(inputs)
    if placement == "layer-bn-act":
        a = keras.layers.Activation("relu", name="c1_act")(
            bn("c1_bn")(conv(4, 3, "c1")(x))
        )
        b = keras.layers.ReLU(name="r2")(bn("c2_bn")(conv(4, 3, "c2")(a)))
        b = bn("c3_bn")(conv(4, 1, "c3")(b))
    elif placement == "layer-act-bn":
        a = bn("c1_bn")(conv(4, 3, "c1", "relu")(x))  # activation kept inside
        b = bn("c2_bn")(keras.layers.ReLU(name="r2")(conv(4, 3, "c2")(a)))
        b = bn("c3_bn")(conv(4, 1, "c3")(b))
    else:  # "bn-act-layer": c1's ReLU moves to the edge towards c2 (the
        # add keeps a ReLU of its own), BN goes before the stand-alone r2,
        # and the logits' input, an add's average, has no activation.
        c1 = conv(4, 3, "c1")(x)
        a = keras.layers.Activation("relu", name="c1_act")(c1)
        b = keras.layers.Activation("relu", name="c2_act")(bn("c2_bn")(c1))
        b = keras.layers.ReLU(name="r2")(bn("c3_bn")(conv(4, 3, "c2")(b)))
        b = conv(4, 1, "c3")(b)
    c = keras.layers.Add()([a, b])
    d = keras.layers.GlobalAveragePooling2D()(c)
    if placement == "bn-act-layer":
        d = bn("logits_bn")(d)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(d))


@pytest.mark.parametrize(
    "placement", ["layer-bn-act", "layer-act-bn", "bn-act-layer"]
)
def test_residual_functional_model(placement):
    model = _residual()
    new = bn_keras.insert_batchnorm(
        model, placement=placement, input_batchnorm=True
    )
    assert isinstance(new, keras.Model) and new.name == "residual"
    # The weights of every original layer are kept.
    for layer in model.layers:
        for a, b in zip(
            new.get_layer(layer.name).get_weights(), layer.get_weights()
        ):
            np.testing.assert_array_equal(a, b)
    _randomize_bn(new, seed=5)
    expected = _residual_by_hand(placement)
    found = [layer.name for layer in bn_keras.find_batchnorm(new)]
    assert sorted(found) == sorted(
        layer.name for layer in bn_keras.find_batchnorm(expected)
    )
    named = {layer.name: layer for layer in new.layers}
    for layer in expected.layers:
        if layer.name in named and layer.weights:
            layer.set_weights(named[layer.name].get_weights())
    assert len(new.layers) == len(expected.layers)
    x = sample_inputs((6, 8, 8, 3))
    for training in (False, True):
        np.testing.assert_allclose(
            to_numpy(new(x, training=training)),
            to_numpy(expected(x, training=training)),
            rtol=1e-4,
            atol=1e-4,
            err_msg=f"training={training}",
        )


def test_layer_act_bn_goes_after_a_standalone_activation_layer():
    new = bn_keras.insert_batchnorm(_residual(), placement="layer-act-bn")
    names = [layer.name for layer in new.layers]
    assert names.index("c2_bn") == names.index("r2") + 1
    assert names.index("c1_bn") == names.index("c1") + 1  # activation inside


def test_channels_first_convolutions_get_bn_on_axis_1(channels_first):
    new = bn_keras.insert_batchnorm(_residual("channels_first"))
    axes = {bn.name: bn.axis for bn in bn_keras.find_batchnorm(new)}
    assert axes == {"c1_bn": 1, "c2_bn": 1, "c3_bn": 1}
    # Run by the model where this machine runs channels-first
    # convolutions, else by its channels-last twin.
    x = sample_inputs((4, 3, 8, 8))
    y = channels_first.run(new, x, training=True)
    assert y.shape == (4, 3)
    assert np.all(np.isfinite(y))
    # In training, BN on axis 1 standardizes each channel of the
    # convolution's output over the batch and the image.
    c1 = keras.Model(new.inputs[0], new.get_layer("c1_bn").output)
    h = channels_first.run(c1, x, training=True)
    np.testing.assert_allclose(h.mean(axis=(0, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(h.var(axis=(0, 2, 3)), 1.0, atol=1e-2)
    if channels_first.supported:  # the twin computes the same
        np.testing.assert_allclose(
            channels_first.run_twin(new, x, training=True), y, atol=1e-5
        )


# -- selection ----------------------------------------------------------------


def test_output_layer_gets_bn_only_when_named():
    model = _mlp()
    default = bn_keras.insert_batchnorm(model)
    assert "out_bn" not in [layer.name for layer in default.layers]
    named = bn_keras.insert_batchnorm(model, layers=["h2", "out"])
    assert [layer.name for layer in named.layers] == [
        "h1",
        "h2",
        "h2_bn",
        "h2_act",
        "out",
        "out_bn",
    ]


def test_layers_as_a_callable():
    new = bn_keras.insert_batchnorm(
        _residual(), layers=lambda layer: layer.name in ("c2", "gap")
    )
    assert [bn.name for bn in bn_keras.find_batchnorm(new)] == [
        "c2_bn",
        "gap_bn",
    ]


def test_unknown_layer_names():
    with pytest.raises(ValueError) as info:
        bn_keras.insert_batchnorm(_mlp(), layers=["h1", "h9"])
    message = str(info.value)
    assert "['h9']" in message and "['h1', 'h2', 'out']" in message
    assert message.endswith("Received: layers=['h1', 'h9']")


def test_layers_of_the_wrong_type():
    with pytest.raises(TypeError, match=re.escape("Received: layers=3")):
        bn_keras.insert_batchnorm(_mlp(), layers=3)


def test_unknown_placement():
    with pytest.raises(
        ValueError, match=re.escape("Received: placement='middle'")
    ):
        bn_keras.insert_batchnorm(_mlp(), placement="middle")


def test_unknown_normalization():
    with pytest.raises(
        ValueError, match=re.escape("Received: normalization='lrn'")
    ):
        bn_keras.insert_batchnorm(_mlp(), normalization="lrn")


@pytest.mark.parametrize(
    "normalization, cls",
    [
        ("ghost", bn_keras.layers.GhostBatchNormalization),
        ("renorm", bn_keras.layers.BatchRenormalization),
        ({"momentum": 0.5}, bn_keras.layers.BatchNormalization),
        (
            keras.layers.BatchNormalization(momentum=0.5),
            keras.layers.BatchNormalization,
        ),
    ],
)
def test_normalization_choice(normalization, cls):
    new = bn_keras.insert_batchnorm(_mlp(), normalization=normalization)
    bns = bn_keras.find_batchnorm(new)
    assert [type(bn) for bn in bns] == [cls, cls]
    if isinstance(normalization, (dict, keras.layers.Layer)):
        assert [bn.momentum for bn in bns] == [0.5, 0.5]


# -- inputs -------------------------------------------------------------------


def test_input_batchnorm_standardizes_float_inputs_only():
    tokens = keras.Input((5,), dtype="int32", name="tokens")
    numbers = keras.Input((3,), name="numbers")
    t = keras.layers.GlobalAveragePooling1D()(
        keras.layers.Embedding(10, 4, name="embed")(tokens)
    )
    h = keras.layers.Concatenate()([t, numbers])
    model = keras.Model([tokens, numbers], keras.layers.Dense(1, name="o")(h))
    new = bn_keras.insert_batchnorm(model, placement=None, input_batchnorm=True)
    bns = bn_keras.find_batchnorm(new)
    assert [bn.name for bn in bns] == ["numbers_bn"]
    assert bns[0].center is False and bns[0].scale is False
    x = [
        np.random.default_rng(0).integers(0, 10, (8, 5)),
        sample_inputs((8, 3), shift=50.0),
    ]
    # The inputs reach the model standardized with the batch statistics.
    standardized = (x[1] - x[1].mean(0)) / np.sqrt(x[1].var(0) + EPS)
    reference = keras.Model(model.inputs, model.layers[-2].output)
    inner = keras.Model(new.inputs, new.get_layer("concatenate").output)
    np.testing.assert_allclose(
        to_numpy(inner(x, training=True))[:, 4:], standardized, atol=1e-4
    )
    np.testing.assert_allclose(
        to_numpy(inner(x, training=True))[:, :4],
        to_numpy(reference(x))[:, :4],
        atol=1e-6,
    )


def test_input_batchnorm_on_a_sequential_model():
    new = bn_keras.insert_batchnorm(
        _mlp(), placement=None, input_batchnorm=True
    )
    assert [layer.name for layer in new.layers] == ["x_bn", "h1", "h2", "out"]


def test_input_batchnorm_needs_a_built_sequential_model():
    model = keras.Sequential([keras.layers.Dense(2)])
    with pytest.raises(
        ValueError, match=re.escape("Received: model built=False")
    ):
        bn_keras.insert_batchnorm(model, input_batchnorm=True)


@pytest.mark.parametrize(
    "value, error, text",
    [
        (
            "yes",
            ValueError,
            "Valid names: 'none', 'batch', 'renorm'. "
            "Received: input_batchnorm='yes'",
        ),
        (3, TypeError, "Received: input_batchnorm=3"),
        ({"momentum": 2.0}, ValueError, "Received: momentum=2.0"),
    ],
)
def test_input_batchnorm_errors(value, error, text):
    with pytest.raises(error, match=re.escape(text) + "$"):
        bn_keras.insert_batchnorm(_mlp(), input_batchnorm=value)


# Each form of `input_batchnorm`: the input layer's class and settings.
# `normalization="ghost"` shows which forms follow it (only True).
INPUT_FORMS = {
    "false": (False, None),
    "none": (None, None),
    "none_name": ("none", None),
    "true": (
        True,
        dict(cls="GhostBatchNormalization", virtual_batch_size=32),
    ),
    "batch": (
        "batch",
        dict(cls="BatchNormalization", renorm=False, momentum=0.99),
    ),
    "renorm": (
        " ReNorm",
        dict(
            cls="BatchNormalization",
            renorm=True,
            renorm_clipping={},
            momentum=None,
            renorm_momentum=None,
        ),
    ),
    "dict": (
        {"momentum": None, "renorm": True},
        dict(cls="BatchNormalization", momentum=None, renorm_momentum=0.99),
    ),
    "dict_with_scale": (
        {"scale": True},
        dict(cls="BatchNormalization", scale=True),
    ),
    "layer": (
        # A template keeps every argument of its own, center and scale too.
        bn_keras.layers.BatchRenormalization(renorm_momentum=None, scale=False),
        dict(
            cls="BatchRenormalization",
            renorm_momentum=None,
            center=True,
            scale=False,
        ),
    ),
}


@pytest.mark.parametrize("form", INPUT_FORMS)
def test_input_batchnorm_forms(form, tmp_path):
    """Each form gives its layer (center and scale False unless the form
    sets them), and the model saves and loads with the same predictions
    and statistics after a few training steps."""
    value, expected = INPUT_FORMS[form]
    new = bn_keras.insert_batchnorm(
        _mlp(), normalization="ghost", input_batchnorm=value
    )
    names = [layer.name for layer in new.layers]
    if expected is None:
        assert "x_bn" not in names
        return
    expected = dict(expected)
    assert names[0] == "x_bn"
    layer = new.get_layer("x_bn")
    assert type(layer).__name__ == expected.pop("cls")
    expected = {"center": False, "scale": False, **expected}
    for argument, want in expected.items():
        assert getattr(layer, argument) == want, argument

    x = sample_inputs((32, 4), shift=20.0, scale=5.0)
    new.compile(optimizer="sgd", loss="mse")
    new.fit(x, x[:, :2], batch_size=8, epochs=1, shuffle=False, verbose=0)
    path = str(tmp_path / "model.keras")
    new.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.get_layer("x_bn").get_config() == layer.get_config()
    for a, b in zip(loaded.get_layer("x_bn").weights, layer.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b), a.name)
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), new.predict(x, verbose=0), atol=1e-6
    )


def test_renorm_input_batchnorm_learns_the_training_set_statistics():
    """After `fit` on batches of equal size, `"renorm"` standardizes in
    inference by the mean and variance of the training set (NumPy)."""
    new = bn_keras.insert_batchnorm(
        _mlp(), placement=None, input_batchnorm="renorm"
    )
    rng = np.random.default_rng(0)
    x = rng.uniform([1, 1, -5, 0], [10, 200, 5, 1e3], (64, 4))
    x = x.astype("float32")
    new.compile(optimizer="adam", loss="mse")
    new.fit(x, x[:, :2], batch_size=16, epochs=3, verbose=0)
    layer = new.get_layer("x_bn")
    assert int(to_numpy(layer.num_batches_tracked)) == 12
    standardized = (x - x.mean(0)) / np.sqrt(x.var(0) + EPS)
    np.testing.assert_allclose(
        to_numpy(layer(x, training=False)), standardized, atol=1e-5
    )


# -- other models -------------------------------------------------------------


def test_nested_sequential_model_is_rewritten():
    block = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(4, activation="relu", name="inner"),
        ],
        name="block",
    )
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(1, name="o")(block(inputs))
    new = bn_keras.insert_batchnorm(keras.Model(inputs, outputs))
    new_block = new.get_layer("block")
    assert [layer.name for layer in new_block.layers] == [
        "inner",
        "inner_bn",
        "inner_act",
    ]
    np.testing.assert_array_equal(
        new_block.get_layer("inner").get_weights()[0],
        block.get_layer("inner").get_weights()[0],
    )


def test_shared_layer_gets_one_bn_per_call():
    inputs = keras.Input((4,))
    shared = keras.layers.Dense(4, name="shared")
    outputs = keras.layers.Dense(1, name="o")(
        keras.layers.Add()([shared(inputs), shared(shared(inputs))])
    )
    new = bn_keras.insert_batchnorm(keras.Model(inputs, outputs))
    assert len(bn_keras.find_batchnorm(new)) == 3
    assert sum(layer.name == "shared" for layer in new.layers) == 1


def test_subclassed_model_is_refused():
    class Net(keras.Model):
        def __init__(self):
            super().__init__(name="net")
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    with pytest.raises(TypeError, match="subclassed model") as info:
        bn_keras.insert_batchnorm(Net())
    assert "Python code of its `call()`" in str(info.value)
    assert str(info.value).endswith(
        "Received: model=<subclassed model Net name=net>"
    )


def test_not_a_model():
    with pytest.raises(TypeError, match="Received: model=<Dense"):
        bn_keras.insert_batchnorm(keras.layers.Dense(2))


def test_compiled_copy_trains_and_saves(tmp_path):
    model = _residual()
    model.compile(keras.optimizers.SGD(0.01), "mse", jit_compile=True)
    new = bn_keras.insert_batchnorm(model, normalization="ghost")
    assert new.compiled
    x = sample_inputs((16, 8, 8, 3))
    y = np.zeros((16, 3), "float32")
    bn = new.get_layer("c1_bn")
    before = to_numpy(bn.moving_mean)
    history = new.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert not np.allclose(to_numpy(bn.moving_mean), before)
    path = str(tmp_path / "new.keras")
    new.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), new.predict(x, verbose=0), atol=1e-6
    )
