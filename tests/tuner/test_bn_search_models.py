"""`BNSearchMLP` and `BNSearchCNN`: pinned choices give the expected models."""

import re

import keras
import keras_tuner
import numpy as np
import pytest

import bn_keras
from bn_keras.tuner import BNSearchCNN
from bn_keras.tuner import BNSearchMLP
from bn_keras.tuner.bn_hyperparameters import CHOICES
from tests.tuner.test_bn_placement_hypermodel import grid_configurations
from tests.tuner.test_bn_placement_hypermodel import kind
from tests.tuner.test_bn_placement_hypermodel import pinned


def sublayer_types(block):
    return [type(layer).__name__ for layer in block.layers]


@pytest.mark.parametrize(
    "make", [BNSearchMLP, BNSearchCNN], ids=["mlp", "cnn"]
)
def test_input_batchnorm_names(make):
    shape = (8,) if make is BNSearchMLP else (8, 8, 1)
    hypermodel = make(
        3, input_shape=shape, input_batchnorm=("none", "batch", "renorm")
    )
    for value in ("none", "batch", "renorm"):
        hp = keras_tuner.HyperParameters()
        hp.Fixed("input_batchnorm", value)
        model = hypermodel.build(hp)
        names = [layer.name for layer in model.layers]
        if value == "none":
            assert "input_bn" not in names
            continue
        assert names[0] == "input_bn"
        layer = model.get_layer("input_bn")
        assert not layer.center and not layer.scale
        assert layer.renorm is (value == "renorm")
        assert layer.momentum == (None if value == "renorm" else 0.99)
    hp = keras_tuner.HyperParameters()
    hypermodel.build(hp)
    (choice,) = [p for p in hp.space if p.name == "input_batchnorm"]
    assert choice.values == ["none", "batch", "renorm"]


def test_mlp_pinned_structure():
    hypermodel = BNSearchMLP(3, input_shape=(8,))
    hp = pinned(
        num_layers=2,
        block_0__units=16,
        block_0__placement="layer-bn-act",
        block_0__normalization="ghost",
        block_0__virtual_batch_size=16,
        block_1__units=8,
        block_1__placement="bn-act-layer",
        block_1__normalization="renorm",
        block_1__momentum=0.99,
        learning_rate=0.01,
        input_batchnorm=True,
    )
    model = hypermodel.build(hp)
    # One activation between two layers: block_1 (pre-activation) applies
    # block_0's, and block_1's own follows it, before the head.
    assert [layer.name for layer in model.layers] == [
        "input_bn",
        "block_0",
        "block_1",
        "block_1_act",
        "head",
    ]
    first, second = model.get_layer("block_0"), model.get_layer("block_1")
    assert sublayer_types(first) == ["Dense", "BatchNormalization"]
    assert sublayer_types(second) == [
        "BatchNormalization",
        "Activation",
        "Dense",
    ]
    assert model.get_layer("block_1_act").activation.__name__ == "relu"
    assert (first.layer.name, first.layer.units) == ("block_0_dense", 16)
    assert second.layer.units == 8
    # BN right after the layer takes the place of its bias.
    assert first.layer.use_bias is False and second.layer.use_bias is True
    layers = bn_keras.find_batchnorm(model)
    assert [(kind(bn), bn.momentum) for bn in layers] == [
        ("batch", 0.99),  # the input BN: plain, default momentum
        ("ghost16", 0.9),
        ("renorm", 0.99),
    ]
    input_bn = model.get_layer("input_bn")
    assert not input_bn.center and not input_bn.scale
    assert model.get_layer("head").units == 3
    assert float(model.optimizer.learning_rate) == pytest.approx(0.01)
    assert isinstance(model.loss, keras.losses.SparseCategoricalCrossentropy)
    assert model.output_shape == (None, 3)


def test_mlp_depth_makes_deeper_blocks_inactive():
    hypermodel = BNSearchMLP(2, input_shape=(4,), num_layers=[1, 3])
    hp = pinned(num_layers=1)
    model = hypermodel.build(hp)
    assert [layer.name for layer in model.layers] == ["block_0", "head"]
    conditions = {
        p.name: [(c.name, list(c.values)) for c in p.conditions]
        for p in hp.space
    }
    assert conditions["block_0/units"] == []
    assert conditions["block_1/units"] == [("num_layers", [3])]
    assert conditions["block_2/placement"] == [("num_layers", [3])]
    assert not any(n.startswith(("block_1/", "block_2/")) for n in hp.values)


def test_mlp_grid_skips_absent_blocks(tmp_path):
    hypermodel = BNSearchMLP(
        2,
        input_shape=(4,),
        num_layers=[1, 2],
        units=8,
        learning_rate=0.01,
        placements=["layer-bn-act", "layer-act"],
        normalizations="batch",
        momentum=0.9,
        input_batchnorm=False,
    )
    seen = grid_configurations(hypermodel, tmp_path)
    # 2 choices for one block, 4 for two; block 1 is not varied at depth 1.
    assert len(seen) == 6
    assert sorted(
        (v["num_layers"], v["block_0/placement"], v.get("block_1/placement"))
        for v in seen
    ) == sorted(
        [(1, p, None) for p in ["layer-bn-act", "layer-act"]]
        + [(2, p, q) for p in ["layer-bn-act", "layer-act"]
           for q in ["layer-bn-act", "layer-act"]]
    )


@pytest.mark.parametrize("num_classes", [None, 1])
def test_mlp_regression(num_classes):
    model = BNSearchMLP(num_classes, input_shape=(4,)).build(
        keras_tuner.HyperParameters()
    )
    assert model.get_layer("head").units == 1
    assert model.loss == "mse"
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    history = model.fit(x, x[:, :1], epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_mlp_without_input_shape_builds_on_first_batch():
    model = BNSearchMLP(2, input_batchnorm=False).build(
        keras_tuner.HyperParameters()
    )
    assert not model.built
    model.fit(np.ones((8, 5), "float32"), np.zeros(8, "int32"), verbose=0)
    assert model.get_layer("block_0").layer.kernel.shape == (5, 32)


@pytest.mark.parametrize(
    "placement, types, bias",
    [
        ("layer-bn-act", ["Conv2D", "BatchNormalization", "Activation"],
         False),
        ("layer-act-bn", ["Conv2D", "Activation", "BatchNormalization"], True),
        ("bn-act-layer", ["BatchNormalization", "Activation", "Conv2D"], True),
        ("layer-act", ["Conv2D", "Activation"], True),
    ],
)
def test_cnn_pinned_structure(placement, types, bias):
    """The placement pinned on the second block (the first reads the
    input, where "bn-act-layer" counts as "layer-act"): its layers, and one
    activation between two layers."""
    hypermodel = BNSearchCNN(10, input_shape=(8, 8, 1), kernel_size=2)
    hp = pinned(
        num_blocks=2,
        block_0__filters=4,
        block_0__placement="layer-act",
        block_1__filters=8,
        block_1__placement=placement,
        block_1__normalization="batch",
    )
    model = hypermodel.build(hp)
    pre = placement == "bn-act-layer"
    assert [layer.name for layer in model.layers] == [
        "block_0",
        "block_0_pool",
        "block_1",
        *(["block_1_act"] if pre else []),
        "block_1_pool",
        "pool",
        "head",
    ]
    # block_1 applies block_0's activation before its layer.
    first = ["Conv2D"] if pre else ["Conv2D", "Activation"]
    assert sublayer_types(model.get_layer("block_0")) == first
    block = model.get_layer("block_1")
    assert sublayer_types(block) == types
    assert block.layer.filters == 8 and block.layer.kernel_size == (2, 2)
    assert block.layer.use_bias is bias
    layers = bn_keras.find_batchnorm(model)
    if placement == "layer-act":
        assert layers == []
    else:
        (bn,) = layers
        channels = 4 if pre else 8
        assert bn.axis in (-1, 3) and bn.moving_mean.shape == (channels,)
    assert model.output_shape == (None, 10)
    assert model(np.ones((2, 8, 8, 1), "float32")).shape == (2, 10)


def test_first_block_gets_no_bn_before_it():
    """"bn-act-layer" is not searched for the first block (the input has no
    activation to move) and counts as "layer-act" when set in `hp`."""
    hypermodel = BNSearchMLP(3, input_shape=(8,), num_layers=1, units=4)
    hp = keras_tuner.HyperParameters()
    hypermodel.build(hp)
    (choice,) = [p for p in hp.space if p.name == "block_0/placement"]
    assert choice.values == ["layer-bn-act", "layer-act-bn", "layer-act"]
    model = hypermodel.build(pinned(block_0__placement="bn-act-layer"))
    assert sublayer_types(model.get_layer("block_0")) == ["Dense", "Activation"]
    assert bn_keras.find_batchnorm(model) == []


@pytest.mark.parametrize(
    "placements, activations",
    [
        # One activation between consecutive layers whatever the mix.
        (["bn-act-layer", "bn-act-layer", "bn-act-layer"], 3),
        (["layer-bn-act", "bn-act-layer", "layer-bn-act"], 3),
        (["layer-act-bn", "layer-act", "bn-act-layer"], 3),
    ],
)
def test_one_activation_between_two_layers(placements, activations):
    hypermodel = BNSearchMLP(3, input_shape=(8,), num_layers=3, units=4)
    hp = pinned(
        **{f"block_{i}__placement": p for i, p in enumerate(placements)},
        **{f"block_{i}__normalization": "batch" for i in range(3)},
    )
    model = hypermodel.build(hp)
    steps = []
    for layer in model.layers:
        for sub in getattr(layer, "layers", [layer]):
            if isinstance(sub, keras.layers.Dense):
                steps.append("layer")
            elif isinstance(sub, keras.layers.Activation):
                steps.append("act")
    # layer act layer act layer act head
    assert steps == ["layer", "act"] * activations + ["layer"]


def test_cnn_deep_on_small_images():
    model = BNSearchCNN(3, input_shape=(4, 4, 2), num_blocks=4).build(
        keras_tuner.HyperParameters()
    )
    assert model.get_layer("block_3_pool").output.shape == (None, 1, 1, 16)


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: BNSearchMLP(0), ValueError, "Received: num_classes=0"),
        (lambda: BNSearchMLP(2.5), TypeError, "Received: num_classes=2.5"),
        (lambda: BNSearchMLP(2, input_shape=8), TypeError,
         "Received: input_shape=8"),
        (lambda: BNSearchMLP(2, units=[16, 0]), ValueError,
         "Received: units=[16, 0]"),
        (lambda: BNSearchMLP(2, num_layers=[]), ValueError,
         "Received: num_layers=[]"),
        (lambda: BNSearchMLP(2, input_batchnorm=None), TypeError,
         "Received: input_batchnorm=None"),
        (lambda: BNSearchMLP(2, input_batchnorm=["none", "ghost"]),
         ValueError, "Received: input_batchnorm=['none', 'ghost']"),
        (lambda: BNSearchMLP(2, normalizations=["layer"]), ValueError,
         "Received: normalizations=['layer']"),
        (lambda: BNSearchMLP(2, virtual_batch_sizes=8), TypeError,
         "Received: virtual_batch_sizes=8"),
        (lambda: BNSearchCNN(2, input_shape=(8, 8)), ValueError,
         "Received: input_shape=(8, 8)"),
        (lambda: BNSearchCNN(2, kernel_size=[3, 5]), TypeError,
         "Received: kernel_size=[3, 5]"),
        (lambda: BNSearchCNN(2, filters=-1), ValueError,
         "Received: filters=-1"),
    ],
)
def test_errors(make, error, message):
    with pytest.raises(error, match=re.escape(message) + "$"):
        make()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: BNSearchMLP(3, (8,)), "BNSearchMLP.__init__()"),
        (lambda: BNSearchCNN(3, (1, 2)), "BNSearchCNN.__init__()"),
        (
            lambda: bn_keras.tuner.BNHyperModel("name"),
            "BNHyperModel.__init__()",
        ),
    ],
)
def test_arguments_after_the_first_are_keyword_only(make, message):
    with pytest.raises(TypeError, match=re.escape(message) + " takes "):
        make()


@pytest.mark.parametrize(
    "make", [BNSearchMLP, BNSearchCNN], ids=["mlp", "cnn"]
)
def test_an_unknown_choice_is_named(make):
    with pytest.raises(TypeError) as error:
        make(3, momentum=[0.9], momentun=[0.99])
    assert str(error.value) == (
        f"{make.__name__} got unexpected keyword arguments ['momentun']; the "
        "choices it passes on to bn_hyperparameters are "
        f"{list(CHOICES)}. Received: "
        "momentun=[0.99]"
    )
