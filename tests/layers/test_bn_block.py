"""Tests of `bn_keras.layers.BNBlock` and of the placement registry."""

import json
import re

import keras
import numpy as np
import pytest

import bn_keras
from bn_keras import registry
from tests.layer_test_case import LAYER_CHECKS
from tests.layer_test_case import randomize_weights
from tests.layer_test_case import sample_inputs
from tests.layer_test_case import to_numpy

EPS = 1e-3  # BatchNormalization's default epsilon
PLACEMENTS = ["layer-bn-act", "layer-act-bn", "bn-act-layer", "layer-act"]


def _relu(x):
    return np.maximum(x, 0.0)


def _bn(x, gamma, beta, mean, variance):
    return (x - mean) / np.sqrt(variance + EPS) * gamma + beta


def _batch_stats(x):
    return x.mean(axis=0), x.var(axis=0)  # biased variance, as Keras


def _by_hand(placement, x, dense, bn, training):
    """The block's computation written out with NumPy."""
    kernel = dense["kernel"]
    bias = dense.get("bias", 0.0)

    def norm(v):
        if training:
            mean, variance = _batch_stats(v)
        else:
            mean, variance = bn["moving_mean"], bn["moving_variance"]
        return _bn(v, bn["gamma"], bn["beta"], mean, variance)

    if placement == "layer-bn-act":
        return _relu(norm(x @ kernel + bias))
    if placement == "layer-act-bn":
        return norm(_relu(x @ kernel + bias))
    if placement == "bn-act-layer":
        return _relu(norm(x)) @ kernel + bias
    return _relu(x @ kernel + bias)


def _weights(layer):
    return {w.name: to_numpy(w) for w in layer.weights}


# -- order of operations ------------------------------------------------------


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_order_of_operations_equals_computation_by_hand(placement, training):
    block = bn_keras.layers.BNBlock(
        keras.layers.Dense(5), activation="relu", placement=placement
    )
    x = sample_inputs((16, 4))
    block.build(x.shape)
    randomize_weights(block, seed=1)
    dense = _weights(block.layer)
    bn = _weights(block.normalization) if block.normalization else None
    expected = _by_hand(placement, x, dense, bn, training)
    actual = to_numpy(block(x, training=training))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "placement, order",
    [
        ("layer-bn-act", ["Dense", "BatchNormalization", "Activation"]),
        ("layer-act-bn", ["Dense", "Activation", "BatchNormalization"]),
        ("bn-act-layer", ["BatchNormalization", "Activation", "Dense"]),
        ("layer-act", ["Dense", "Activation"]),
    ],
)
def test_layers_are_listed_in_forward_order(placement, order):
    block = bn_keras.layers.BNBlock(
        keras.layers.Dense(3), activation="relu", placement=placement
    )
    assert [type(layer).__name__ for layer in block.layers] == order


@pytest.mark.parametrize(
    "alias, canonical",
    [
        ("before_activation", "layer-bn-act"),
        ("after_activation", "layer-act-bn"),
        ("pre_activation", "bn-act-layer"),
        ("none", "layer-act"),
        (None, "layer-act"),
        ("Layer-BN-Act", "layer-bn-act"),
    ],
)
def test_placement_aliases(alias, canonical):
    assert registry.get_placement(alias) == canonical
    block = bn_keras.layers.BNBlock(keras.layers.Dense(2), placement=alias)
    assert block.placement == canonical
    assert (block.normalization is None) == (canonical == "layer-act")


# -- bias and activation of the wrapped layer ---------------------------------


@pytest.mark.parametrize(
    "placement, use_bias, params",
    [
        # Dense 4 -> 8: kernel 32, bias 8; BN on 8 features: 4 * 8 = 32
        # (gamma, beta, moving mean, moving variance), on 4 features: 16.
        ("layer-bn-act", False, 32 + 32),
        ("layer-act-bn", True, 32 + 8 + 32),
        ("bn-act-layer", True, 16 + 32 + 8),
        ("layer-act", True, 32 + 8),
    ],
)
def test_bias_is_dropped_only_when_bn_follows_the_layer(
    placement, use_bias, params
):
    block = bn_keras.layers.BNBlock(
        keras.layers.Dense(8), activation="relu", placement=placement
    )
    model = keras.Sequential([keras.Input((4,)), block])
    assert block.layer.use_bias is use_bias
    assert model.count_params() == params


def test_bias_is_kept_when_bn_does_not_center():
    block = bn_keras.layers.BNBlock(
        keras.layers.Dense(8), normalization={"center": False}
    )
    block.build((None, 4))
    assert block.layer.use_bias is True
    # kernel + bias + BN's gamma, moving mean and moving variance (no beta)
    assert block.count_params() == 32 + 8 + 3 * 8


def test_conv_block_drops_bias_and_normalizes_channels_first():
    block = bn_keras.layers.BNBlock(
        keras.layers.Conv2D(6, 3, data_format="channels_first"),
        activation="relu",
    )
    block.build((None, 2, 8, 8))
    assert block.layer.use_bias is False
    assert block.normalization.axis == 1
    assert tuple(block.normalization.gamma.shape) == (6,)
    # Conv kernel 3*3*2*6 = 108, BN 4 * 6 = 24.
    assert block.count_params() == 108 + 24


def test_activation_inside_the_layer_is_split_out():
    block = bn_keras.layers.BNBlock(keras.layers.Dense(5, activation="tanh"))
    assert block.layer.activation is keras.activations.linear
    assert block.activation is keras.activations.tanh
    x = sample_inputs((16, 4))
    block.build(x.shape)
    randomize_weights(block, seed=2)
    dense, bn = _weights(block.layer), _weights(block.normalization)
    mean, variance = _batch_stats(x @ dense["kernel"])
    expected = np.tanh(
        _bn(x @ dense["kernel"], bn["gamma"], bn["beta"], mean, variance)
    )
    np.testing.assert_allclose(
        to_numpy(block(x, training=True)), expected, rtol=1e-5, atol=1e-5
    )


def test_layer_that_needs_no_change_is_used_as_is():
    dense = keras.layers.Dense(4, use_bias=False)
    block = bn_keras.layers.BNBlock(dense, activation="relu")
    assert block.layer is dense


# -- normalization ------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, cls, attribute, value",
    [
        (None, bn_keras.layers.BatchNormalization, "momentum", 0.99),
        ("batch", bn_keras.layers.BatchNormalization, "momentum", 0.99),
        (
            "ghost",
            bn_keras.layers.GhostBatchNormalization,
            "virtual_batch_size",
            32,
        ),
        ("renorm", bn_keras.layers.BatchRenormalization, "renorm", True),
        (
            {"momentum": 0.9},
            bn_keras.layers.BatchNormalization,
            "momentum",
            0.9,
        ),
        (
            bn_keras.layers.GhostBatchNormalization(virtual_batch_size=4),
            bn_keras.layers.GhostBatchNormalization,
            "virtual_batch_size",
            4,
        ),
        (
            keras.layers.BatchNormalization(epsilon=0.01),
            keras.layers.BatchNormalization,
            "epsilon",
            0.01,
        ),
    ],
)
def test_normalization_specifications(spec, cls, attribute, value):
    block = bn_keras.layers.BNBlock(keras.layers.Dense(3), normalization=spec)
    assert type(block.normalization) is cls
    assert getattr(block.normalization, attribute) == value
    if isinstance(spec, keras.layers.Layer):
        assert block.normalization is not spec  # a fresh copy of a template


def test_one_template_makes_independent_layers():
    template = bn_keras.layers.BatchNormalization(momentum=0.5)
    blocks = [
        bn_keras.layers.BNBlock(keras.layers.Dense(3), normalization=template)
        for _ in range(2)
    ]
    a, b = (block.normalization for block in blocks)
    assert a is not b and a.name != b.name
    assert a.momentum == b.momentum == 0.5


def test_ghost_block_trains_with_ghost_batches():
    block = bn_keras.layers.BNBlock(
        keras.layers.Dense(3, use_bias=False),
        normalization={"virtual_batch_size": 4},
    )
    x = sample_inputs((8, 2))
    y = to_numpy(block(x, training=True))
    h = x @ to_numpy(block.layer.kernel)
    expected = np.concatenate(
        [
            _bn(h[i : i + 4], 1.0, 0.0, *_batch_stats(h[i : i + 4]))
            for i in (0, 4)
        ]
    )
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


# -- errors -------------------------------------------------------------------


def test_unknown_placement_lists_the_valid_ones():
    with pytest.raises(ValueError, match="Valid placements") as info:
        bn_keras.layers.BNBlock(keras.layers.Dense(2), placement="bn-first")
    message = str(info.value)
    for name in PLACEMENTS + ["before_activation", "pre_activation", "'none'"]:
        assert name in message
    assert message.endswith("Received: placement='bn-first'")


def test_placement_of_the_wrong_type():
    with pytest.raises(ValueError, match=re.escape("Received: placement=3")):
        registry.get_placement(3)


def test_unknown_normalization_lists_the_valid_ones():
    with pytest.raises(ValueError) as info:
        bn_keras.layers.BNBlock(keras.layers.Dense(2), normalization="group")
    message = str(info.value)
    assert "'batch', 'ghost', 'renorm'" in message
    assert message.endswith("Received: normalization='group'")


def test_normalization_of_the_wrong_type():
    with pytest.raises(
        TypeError, match=re.escape("Received: normalization=0.5")
    ):
        bn_keras.layers.BNBlock(keras.layers.Dense(2), normalization=0.5)


def test_normalization_without_placement():
    with pytest.raises(
        ValueError, match=re.escape("Received: normalization='ghost'")
    ):
        bn_keras.layers.BNBlock(
            keras.layers.Dense(2), placement="none", normalization="ghost"
        )


def test_layer_must_be_a_layer():
    with pytest.raises(TypeError, match=re.escape("Received: layer='dense'")):
        bn_keras.layers.BNBlock("dense")


def test_layer_must_not_be_the_normalization():
    bn = keras.layers.BatchNormalization(name="my_bn")
    with pytest.raises(
        TypeError,
        match=re.escape("Received: layer=<BatchNormalization name=my_bn>"),
    ):
        bn_keras.layers.BNBlock(bn)


def test_activation_given_twice():
    with pytest.raises(
        ValueError,
        match=re.escape(
            "Received: activation='tanh', layer=<Dense name=d> with "
            "activation='relu'"
        ),
    ):
        bn_keras.layers.BNBlock(
            keras.layers.Dense(2, activation="relu", name="d"),
            activation="tanh",
        )


def test_activated_layer_with_pre_activation():
    with pytest.raises(
        ValueError,
        match=re.escape(
            "Received: layer=<Dense name=d> with activation='relu'"
        ),
    ):
        bn_keras.layers.BNBlock(
            keras.layers.Dense(2, activation="relu", name="d"),
            activation="relu",
            placement="pre_activation",
        )


def test_built_layer_that_must_change():
    dense = keras.layers.Dense(2, name="d")
    dense.build((None, 3))
    with pytest.raises(
        ValueError, match=re.escape("Received: layer=<Dense name=d> (built)")
    ):
        bn_keras.layers.BNBlock(dense)


def test_normalization_on_the_wrong_axis_of_a_channels_first_layer():
    block = bn_keras.layers.BNBlock(
        keras.layers.Conv2D(4, 1, data_format="channels_first"),
        normalization=bn_keras.layers.BatchNormalization(axis=-1),
    )
    with pytest.raises(ValueError, match=re.escape("Received: axis=-1")):
        block.build((None, 2, 4, 4))


# -- serialization and models -------------------------------------------------


def _make_block():
    # Fixed names: the shared checks compare weight paths of two copies.
    return bn_keras.layers.BNBlock(
        keras.layers.Dense(4, name="dense"),
        activation="relu",
        placement="layer-bn-act",
        normalization={"name": "bn"},
        name="block",
    )


@pytest.mark.parametrize(
    "check", sorted(set(LAYER_CHECKS) - {"mixed_precision"})
)
def test_layer_conventions(check, tmp_path):
    LAYER_CHECKS[check](_make_block, input_shape=(8, 4), tmp_path=tmp_path)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(policy):
    # The shared mixed-precision check compares BN statistics with a float32
    # run within 1e-5, which the float16 Dense in front of BN cannot give;
    # here: weights and statistics stay float32, outputs are in the compute
    # dtype, and they agree with the float32 block to the compute precision.
    x = sample_inputs((16, 4))
    reference = _make_block()
    reference.build(x.shape)
    randomize_weights(reference, seed=3)
    keras.config.set_dtype_policy(policy)
    block = _make_block()
    block.build(x.shape)
    keras.config.set_dtype_policy("float32")
    block.set_weights(reference.get_weights())
    for training in (True, False):
        y = block(x, training=training)
        compute = keras.DTypePolicy(policy).compute_dtype
        assert keras.backend.standardize_dtype(y.dtype) == compute
        np.testing.assert_allclose(
            to_numpy(keras.ops.cast(y, "float32")),
            to_numpy(reference(x, training=training)),
            rtol=5e-2,
            atol=5e-2,
        )
    for w in block.weights:
        assert keras.backend.standardize_dtype(w.dtype) == "float32", w.path


@pytest.mark.parametrize(
    "placement, normalization",
    [(p, n) for p in PLACEMENTS[:3] for n in (None, "ghost", "renorm")]
    + [("layer-act", None)],
)
def test_config_round_trip(placement, normalization):
    block = bn_keras.layers.BNBlock(
        keras.layers.Conv1D(3, 2),
        activation="gelu",
        placement=placement,
        normalization=normalization,
        name="block",
    )
    config = json.loads(json.dumps(block.get_config()))
    clone = bn_keras.layers.BNBlock.from_config(config)
    assert clone.placement == block.placement
    assert type(clone.normalization) is type(block.normalization)
    assert clone.layer.get_config() == block.layer.get_config()
    assert json.dumps(clone.get_config(), sort_keys=True) == json.dumps(
        config, sort_keys=True
    )


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_save_and_load_in_sequential_model(placement, tmp_path):
    model = keras.Sequential(
        [
            keras.Input((6, 3)),
            bn_keras.layers.BNBlock(
                keras.layers.Conv1D(4, 3),
                activation="relu",
                placement=placement,
                normalization=None if placement == "layer-act" else "ghost",
            ),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(2),
        ]
    )
    x = sample_inputs((16, 6, 3))
    y = np.random.default_rng(1).normal(size=(16, 2)).astype("float32")
    model.compile(keras.optimizers.SGD(0.05), "mse")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    block = loaded.layers[0]
    assert isinstance(block, bn_keras.layers.BNBlock)
    assert block.placement == placement
    for a, b in zip(loaded.weights, model.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6
    )


def test_functional_model_with_blocks_trains_and_updates_statistics():
    inputs = keras.Input((4,))
    h = bn_keras.layers.BNBlock(keras.layers.Dense(8), activation="relu")(
        inputs
    )
    h2 = bn_keras.layers.BNBlock(
        keras.layers.Dense(8), activation="relu", placement="pre_activation"
    )(h)
    outputs = keras.layers.Dense(1)(keras.layers.Add()([h, h2]))
    model = keras.Model(inputs, outputs)
    bns = bn_keras.find_batchnorm(model)
    assert len(bns) == 2
    before = [to_numpy(bn.moving_mean) for bn in bns]
    model.compile(keras.optimizers.SGD(0.01), "mse")
    x = sample_inputs((32, 4))
    model.fit(x, x[:, :1], batch_size=16, epochs=1, verbose=0)
    for bn, old in zip(bns, before):
        assert not np.allclose(to_numpy(bn.moving_mean), old)
