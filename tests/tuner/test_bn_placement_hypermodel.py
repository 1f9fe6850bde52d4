"""`BNPlacementHyperModel`: pinned choices give the expected models."""

import itertools
import re

import keras
import keras_tuner
import numpy as np
import pytest

import bn_keras
from bn_keras.tuner import BNPlacementHyperModel
from tests.tuner.helpers import layer_names
from tests.tuner.helpers import tiny_data
from tests.tuner.helpers import user_functional_model
from tests.tuner.helpers import user_model
from tests.tuner.helpers import weights_of

SLOTS = ["hidden_1", "hidden_2", "out"]


def pinned(**values):
    """HyperParameters with `name__key=value` pinned as `name/key`."""
    hp = keras_tuner.HyperParameters()
    for key, value in values.items():
        hp.Fixed(key.replace("__", "/"), value)
    return hp


def kind(layer):
    if layer.renorm:
        return "renorm"
    if layer.virtual_batch_size is not None:
        return f"ghost{layer.virtual_batch_size}"
    return "batch"


def test_slots_and_the_output_slot_choices():
    hypermodel = BNPlacementHyperModel(user_model())
    assert hypermodel.slots == SLOTS
    placements = bn_keras.registry.PLACEMENTS
    assert hypermodel.slot_placements("hidden_2") == placements
    # No BN before the first layer: its input has no activation to move.
    assert hypermodel.slot_placements("hidden_1") == (
        "layer-bn-act",
        "layer-act-bn",
        "layer-act",
    )
    # BN never goes after the logits: only on their input, or none.
    assert hypermodel.slot_placements("out") == ("layer-act", "bn-act-layer")
    hp = keras_tuner.HyperParameters()
    hypermodel.build(hp)
    space = {p.name: p for p in hp.space}
    assert space["out/placement"].values == ["layer-act", "bn-act-layer"]
    assert space["out/placement"].default == "layer-act"
    assert set(space) == {
        f"{slot}/{key}"
        for slot in SLOTS
        for key in [
            "placement",
            "normalization",
            "momentum",
            "virtual_batch_size",
            "rmax",
            "dmax",
            "warmup_steps",
            "ramp_steps",
        ]
    } | {"input_batchnorm"}


@pytest.mark.parametrize(
    "placement, normalization, names, hidden_activation",
    [
        (
            "layer-bn-act",
            "batch",
            ["hidden_1", "hidden_1_bn", "hidden_1_act", "hidden_2", "out"],
            "linear",
        ),
        (
            "layer-act-bn",
            "ghost",
            ["hidden_1", "hidden_1_bn", "hidden_2", "out"],
            "relu",
        ),
        (
            # Pinned on the second slot (the first has no activation before
            # it): hidden_1's ReLU moves after hidden_2's BN.
            "bn-act-layer",
            "renorm",
            ["hidden_1", "hidden_2_bn", "hidden_2_act", "hidden_2", "out"],
            "linear",
        ),
        ("layer-act", "batch", ["hidden_1", "hidden_2", "out"], "relu"),
    ],
)
def test_pinned_slot_gives_that_structure(
    placement, normalization, names, hidden_activation
):
    hypermodel = BNPlacementHyperModel(user_model())
    slot, other = ("hidden_1", "hidden_2")
    if placement == "bn-act-layer":
        slot, other = other, slot
    hp = pinned(
        **{
            f"{slot}__placement": placement,
            f"{slot}__normalization": normalization,
            f"{slot}__momentum": 0.99,
            f"{slot}__virtual_batch_size": 32,
            f"{slot}__warmup_steps": 1000,
            f"{other}__placement": "layer-act",
        },
        out__placement="layer-act",
        input_batchnorm=False,
    )
    model = hypermodel.build(hp)
    assert layer_names(model) == names
    hidden = model.get_layer("hidden_1")
    assert hidden.activation.__name__ == hidden_activation
    # insert_batchnorm keeps the layers' biases, whatever the placement.
    dense = [model.get_layer(name) for name in SLOTS]
    assert [layer.use_bias for layer in dense] == [True, True, True]
    layers = bn_keras.find_batchnorm(model)
    if placement == "layer-act":
        assert layers == []
        return
    (bn,) = layers
    expected = {"batch": "batch", "ghost": "ghost32", "renorm": "renorm"}
    assert kind(bn) == expected[normalization]
    assert bn.momentum == 0.99 and bn.center and bn.scale
    if normalization == "renorm":
        assert bn.renorm_clipping == bn_keras.layers.RenormClipping(
            rmax=3.0,
            dmax=5.0,
            warmup_steps=1000,
            rmax_steps=2000,
            dmax_steps=2000,
        )
    if placement in ("layer-bn-act", "bn-act-layer"):
        act = model.get_layer(f"{slot}_act")
        assert act.activation.__name__ == "relu"
    assert model.compiled
    assert model.loss.__class__.__name__ == "SparseCategoricalCrossentropy"


def test_each_slot_gets_its_own_choice():
    hypermodel = BNPlacementHyperModel(user_model())
    hp = pinned(
        hidden_1__placement="layer-bn-act",
        hidden_1__normalization="ghost",
        hidden_1__virtual_batch_size=16,
        hidden_2__placement="layer-act-bn",
        hidden_2__normalization="batch",
        hidden_2__momentum=0.99,
        out__placement="bn-act-layer",
        out__normalization="renorm",
        input_batchnorm=False,
    )
    model = hypermodel.build(hp)
    assert layer_names(model) == [
        "hidden_1",
        "hidden_1_bn",
        "hidden_1_act",
        "hidden_2",
        "hidden_2_bn",
        "out_bn",
        "out",
    ]
    layers = bn_keras.find_batchnorm(model)
    assert [(bn.name, kind(bn), bn.momentum) for bn in layers] == [
        ("hidden_1_bn", "ghost16", 0.9),
        ("hidden_2_bn", "batch", 0.99),
        ("out_bn", "renorm", 0.9),
    ]
    x, y = tiny_data(shift=2.0)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    for layer in layers:
        assert np.all(np.isfinite(layer.moving_mean.numpy()))
        assert np.any(layer.moving_mean.numpy() != 0.0)
    assert model.predict(x, verbose=0).shape == (48, 3)


@pytest.mark.parametrize(
    "first, names",
    [
        ("layer-act", ["x_bn", "hidden_1", "hidden_2", "out"]),
        ("bn-act-layer", ["x_bn", "hidden_1", "hidden_2", "out"]),
        (
            "layer-bn-act",
            [
                "x_bn",
                "hidden_1",
                "hidden_1_bn",
                "hidden_1_act",
                "hidden_2",
                "out",
            ],
        ),
    ],
)
def test_input_batchnorm(first, names):
    hypermodel = BNPlacementHyperModel(user_model())
    model = hypermodel.build(
        pinned(
            hidden_1__placement=first,
            hidden_1__normalization="ghost",
            hidden_2__placement="layer-act",
            out__placement="layer-act",
            input_batchnorm=True,
        )
    )
    assert layer_names(model) == names
    input_bn = model.get_layer("x_bn")
    # It standardizes: no gamma, no beta. The first slot gets no BN on its
    # input ("bn-act-layer" counts as "layer-act" there): plain BN. With BN
    # after the first layer the input BN takes its normalization.
    assert not input_bn.center and not input_bn.scale
    expected = "ghost16" if first == "layer-bn-act" else "batch"
    assert kind(input_bn) == expected


def input_kind(layer):
    """How an input normalizer is set up: its kind and momenta."""
    return (kind(layer), layer.momentum, layer.renorm_momentum)


@pytest.mark.parametrize(
    "value, expected",
    [
        ("none", None),
        ("batch", ("batch", 0.99, 0.99)),
        ("renorm", ("renorm", None, None)),
    ],
)
@pytest.mark.parametrize("first", ["layer-act", "bn-act-layer"])
def test_input_batchnorm_names(first, value, expected):
    """Names choose the input normalizer whatever the first slot's
    normalization; with BN on the first layer's input, the input
    normalizer takes its place, as for `True`."""
    hypermodel = BNPlacementHyperModel(
        user_model(), input_batchnorm=["none", "batch", "Renorm", False]
    )
    assert hypermodel.input_batchnorm == ("none", "batch", "renorm")
    hp = pinned(
        hidden_1__placement=first,
        hidden_1__normalization="ghost",
        hidden_2__placement="layer-act",
        out__placement="layer-act",
    )
    hp.Fixed("input_batchnorm", value)
    model = hypermodel.build(hp)
    if expected is None:
        # No BN before the first layer, "bn-act-layer" or not.
        assert layer_names(model) == ["hidden_1", "hidden_2", "out"]
        return
    assert layer_names(model) == ["x_bn", "hidden_1", "hidden_2", "out"]
    input_bn = model.get_layer("x_bn")
    assert input_kind(input_bn) == expected
    assert not input_bn.center and not input_bn.scale


@pytest.mark.parametrize("per_layer", [True, False])
def test_input_batchnorm_choice_in_the_space(per_layer):
    hypermodel = BNPlacementHyperModel(
        user_model(), per_layer=per_layer, input_batchnorm=(False, "renorm")
    )
    hp = keras_tuner.HyperParameters()
    model = hypermodel.build(hp)
    space = {p.name: p for p in hp.space}
    assert space["input_batchnorm"].values == ["none", "renorm"]
    assert space["input_batchnorm"].default == "none"
    assert "x_bn" not in layer_names(model)
    hp.values["input_batchnorm"] = "renorm"
    model = hypermodel.build(hp)
    assert input_kind(model.get_layer("x_bn")) == ("renorm", None, None)


def test_shared_choice_when_per_layer_is_false():
    hypermodel = BNPlacementHyperModel(
        user_model(), per_layer=False, input_batchnorm=False
    )
    hp = pinned(batchnorm__placement="bn-act-layer")
    model = hypermodel.build(hp)
    assert {p.name.split("/")[0] for p in hp.space} == {
        "batchnorm",
        "input_batchnorm",
    }
    # Pre-activation: BN and the activation of the layer before (moved out
    # of it), before each layer but the first.
    assert layer_names(model) == [
        "hidden_1",
        "hidden_2_bn",
        "hidden_2_act",
        "hidden_2",
        "out_bn",
        "out_act",
        "out",
    ]
    model = hypermodel.build(pinned(batchnorm__placement="layer-act-bn"))
    assert layer_names(model) == [
        "hidden_1",
        "hidden_1_bn",
        "hidden_2",
        "hidden_2_bn",
        "out",
    ]


def test_functional_model_with_a_nested_model():
    hypermodel = BNPlacementHyperModel(
        user_functional_model(), input_batchnorm=False
    )
    assert hypermodel.slots == ["conv", "dense", "inner", "logits"]
    model = hypermodel.build(
        pinned(
            conv__placement="layer-act-bn",
            dense__placement="layer-bn-act",
            dense__normalization="ghost",
            inner__placement="bn-act-layer",
            logits__placement="layer-act",
        )
    )
    # BN after the stand-alone ReLU that follows the conv layer; inside the
    # nested model for `inner`.
    assert layer_names(model) == [
        "image",
        "conv",
        "conv_relu",
        "conv_bn",
        "flatten",
        "dense",
        "dense_bn",
        "dense_act",
        "block",
        "logits",
    ]
    assert layer_names(model.get_layer("block")) == ["inner_bn", "inner"]
    assert [(bn.name, kind(bn)) for bn in bn_keras.find_batchnorm(model)] == [
        ("conv_bn", "batch"),
        ("dense_bn", "ghost16"),
        ("inner_bn", "batch"),
    ]
    assert model(np.ones((2, 4, 4, 2), "float32")).shape == (2, 2)


def test_functional_model_with_raw_tensor_ops():
    # `h + 1.0` and `keras.ops.relu` are operations, not layers: `hidden`
    # still feeds `out` through them, so it is not an output slot.
    inputs = keras.Input((4,), name="x")
    h = keras.ops.relu(keras.layers.Dense(6, name="hidden")(inputs) + 1.0)
    outputs = keras.layers.Dense(2, name="out")(h * 2.0)
    hypermodel = BNPlacementHyperModel(
        keras.Model(inputs, outputs), input_batchnorm=False
    )
    assert hypermodel.slots == ["hidden", "out"]
    # Not an output slot: BN may go after it (it reads the input: not
    # before it).
    assert hypermodel.slot_placements("hidden") == (
        "layer-bn-act",
        "layer-act-bn",
        "layer-act",
    )
    model = hypermodel.build(
        pinned(
            hidden__placement="layer-bn-act",
            hidden__normalization="renorm",
            out__placement="layer-act",
        )
    )
    assert [type(op).__name__ for op in model.operations] == [
        "InputLayer",
        "Dense",
        "BatchNormalization",
        "Add",
        "Relu",
        "Multiply",
        "Dense",
    ]
    assert [(bn.name, kind(bn)) for bn in bn_keras.find_batchnorm(model)] == [
        ("hidden_bn", "renorm"),
    ]


def test_the_users_model_is_never_modified_nor_shared(tmp_path):
    model = user_model()
    model.fit(*tiny_data(), epochs=1, verbose=0)  # "pretrained"
    before_names, before_weights = layer_names(model), weights_of(model)
    before_config = model.get_config()
    hypermodel = BNPlacementHyperModel(model)
    tuner = keras_tuner.RandomSearch(  # builds several times
        hypermodel, objective="loss", max_trials=1, directory=tmp_path
    )
    del tuner
    built = []
    for placement in ["layer-bn-act", "layer-act-bn", "bn-act-layer"]:
        built.append(
            hypermodel.build(
                pinned(
                    hidden_1__placement=placement,
                    hidden_2__placement=placement,
                )
            )
        )
    assert layer_names(model) == before_names
    assert model.get_config() == before_config
    for old, new in zip(before_weights, weights_of(model)):
        np.testing.assert_array_equal(old, new)
    user_layers = {id(layer) for layer in model.layers}
    user_variables = {id(v) for v in model.weights}
    for new_model in built:
        assert user_layers.isdisjoint(id(layer) for layer in new_model.layers)
        assert user_variables.isdisjoint(id(v) for v in new_model.weights)
        # Each copy starts from the user's (pretrained) weights.
        np.testing.assert_array_equal(
            new_model.get_layer("hidden_2").get_weights()[0],
            model.get_layer("hidden_2").get_weights()[0],
        )
        assert new_model.optimizer is not model.optimizer


def test_a_function_gives_fresh_weights_per_build():
    calls = []

    def make():
        calls.append(1)
        return user_model()

    hypermodel = BNPlacementHyperModel(make, input_batchnorm=False)
    assert len(calls) == 1  # to find the slots
    first = hypermodel.build(keras_tuner.HyperParameters())
    second = hypermodel.build(keras_tuner.HyperParameters())
    assert len(calls) == 3
    assert layer_names(first) == layer_names(second)
    assert not np.allclose(
        first.get_layer("hidden_1").kernel.numpy(),
        second.get_layer("hidden_1").kernel.numpy(),
    )


def test_compile_kwargs():
    optimizer = keras.optimizers.SGD(0.05)
    hypermodel = BNPlacementHyperModel(
        user_model(compiled=False),
        compile_kwargs={"optimizer": optimizer, "loss": "mse"},
    )
    first = hypermodel.build(keras_tuner.HyperParameters())
    second = hypermodel.build(keras_tuner.HyperParameters())
    assert first.optimizer is not second.optimizer
    assert first.optimizer is not optimizer
    assert float(first.optimizer.learning_rate) == pytest.approx(0.05)

    def compile_kwargs(hp):
        rate = hp.Choice("learning_rate", [0.1, 0.01])
        return {"optimizer": keras.optimizers.Adam(rate), "loss": "mse"}

    hypermodel = BNPlacementHyperModel(
        user_model(compiled=False), compile_kwargs=compile_kwargs
    )
    hp = pinned(learning_rate=0.01)
    model = hypermodel.build(hp)
    assert float(model.optimizer.learning_rate) == pytest.approx(0.01)
    # Without compile_kwargs an uncompiled model stays uncompiled.
    model = BNPlacementHyperModel(user_model(compiled=False)).build(
        keras_tuner.HyperParameters()
    )
    assert not model.compiled


def grid_configurations(hypermodel, directory):
    """Every configuration keras-tuner's GridSearch oracle proposes, driven
    to the end without training (each trial is reported with loss 0)."""
    tuner = keras_tuner.GridSearch(
        hypermodel, objective="loss", directory=directory, overwrite=True
    )
    oracle, seen = tuner.oracle, []
    while True:
        trial = oracle.create_trial("counter")
        if trial.status == "STOPPED":
            return seen
        assert trial.status == "RUNNING"
        seen.append(dict(trial.hyperparameters.values))
        oracle.update_trial(trial.trial_id, {"loss": 0.0})
        trial.status = "COMPLETED"
        oracle.end_trial(trial)


def slot_options(slot, placements, normalizations, sizes):
    """The active values one slot can take, written out by hand."""
    options = []
    for placement in placements:
        if placement == "layer-act":
            options.append({f"{slot}/placement": "layer-act"})
            continue
        for normalization in normalizations:
            base = {
                f"{slot}/placement": placement,
                f"{slot}/normalization": normalization,
                f"{slot}/momentum": 0.9,
            }
            if normalization == "ghost":
                for size in sizes:
                    options.append({**base, f"{slot}/virtual_batch_size": size})
            else:
                options.append(base)
    return options


@pytest.mark.parametrize(
    "placements, normalizations, per_layer, input_batchnorm, expected_count",
    [
        # 4 per hidden slot (none, batch, ghost 8, ghost 16), the output
        # slot has no choice left, twice for the input BN.
        (
            ["layer-bn-act", "layer-act"],
            ["batch", "ghost"],
            True,
            (False, True),
            32,
        ),
        # 2 per slot: the first (after it or none), the second (after or
        # before it), the output (before it or none).
        (["layer-bn-act", "bn-act-layer"], ["batch"], True, False, 8),
        # One shared choice: 4, twice for the input BN.
        (
            ["layer-bn-act", "layer-act"],
            ["batch", "ghost"],
            False,
            (False, True),
            8,
        ),
    ],
)
def test_search_space_size(
    tmp_path,
    placements,
    normalizations,
    per_layer,
    input_batchnorm,
    expected_count,
):
    hypermodel = BNPlacementHyperModel(
        user_model(),
        placements=placements,
        normalizations=normalizations,
        per_layer=per_layer,
        input_batchnorm=input_batchnorm,
        momentum=0.9,
        virtual_batch_size=[8, 16],
    )
    seen = grid_configurations(hypermodel, tmp_path)
    if per_layer:
        out_placements = [p for p in placements if p == "bn-act-layer"]
        out_placements = ["layer-act", *out_placements]
        # The first slot: no BN before it ("bn-act-layer" is "layer-act").
        first = ["layer-act" if p == "bn-act-layer" else p for p in placements]
        per_slot = [
            slot_options(s, list(dict.fromkeys(p)), normalizations, [8, 16])
            for s, p in [("hidden_1", first), ("hidden_2", placements)]
        ]
        if len(out_placements) > 1:
            per_slot.append(
                slot_options("out", out_placements, normalizations, [8, 16])
            )
    else:
        per_slot = [
            slot_options("batchnorm", placements, normalizations, [8, 16])
        ]
    if isinstance(input_batchnorm, bool):
        input_batchnorm = [input_batchnorm]
    expected = []
    for combo in itertools.product(*per_slot):
        for flag in input_batchnorm:
            values = {k: v for option in combo for k, v in option.items()}
            expected.append({**values, "input_batchnorm": flag})
    assert len(expected) == expected_count
    assert len(seen) == expected_count
    assert {frozenset(c.items()) for c in seen} == {
        frozenset(c.items()) for c in expected
    }
    # Every configuration of the grid builds, with BN where it says.
    if per_layer and expected_count == 32:
        for values in seen:
            hp = keras_tuner.HyperParameters()
            for name, value in values.items():
                hp.Fixed(name, value)
            model = hypermodel.build(hp)
            with_bn = sum(
                values.get(f"{s}/placement") == "layer-bn-act" for s in SLOTS
            ) + values["input_batchnorm"]
            assert len(bn_keras.find_batchnorm(model)) == with_bn


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(2)

    def call(self, x):
        return self.dense(x)


def _twice_named():
    inner = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(2, name="same")], name="inner"
    )
    return keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(3, name="same"), inner]
    )


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: BNPlacementHyperModel(_Subclassed()), TypeError,
         "Received: model=<subclassed model _Subclassed>"),
        (lambda: BNPlacementHyperModel(3), TypeError, "Received: model=3"),
        (lambda: BNPlacementHyperModel(lambda: 3), TypeError,
         "Received: model=3 (returned by the function)"),
        (lambda: BNPlacementHyperModel(user_model(), layers=["hidden_1", "x"]),
         ValueError, "Received: layers=['hidden_1', 'x']"),
        (lambda: BNPlacementHyperModel(user_model(), per_layer=1), TypeError,
         "Received: per_layer=1"),
        (lambda: BNPlacementHyperModel(user_model(), input_batchnorm="yes"),
         ValueError, "Received: input_batchnorm='yes'"),
        (lambda: BNPlacementHyperModel(user_model(), input_batchnorm=[1]),
         TypeError, "Received: input_batchnorm=[1]"),
        (lambda: BNPlacementHyperModel(
            keras.Sequential([keras.layers.Dense(2)])),
         ValueError, "Received: input_batchnorm=(False, True)"),
        (lambda: BNPlacementHyperModel(
            keras.Sequential([keras.layers.Dense(2)]),
            input_batchnorm=["none", "renorm"]),
         ValueError, "Received: input_batchnorm=['none', 'renorm']"),
        (lambda: BNPlacementHyperModel(user_model(), momentun=0.9), TypeError,
         "Received: momentun=0.9"),
        (lambda: BNPlacementHyperModel(user_model(), placements=["after"]),
         ValueError, "Received: placements=['after']"),
        (lambda: BNPlacementHyperModel(user_model(), compile_kwargs="adam"),
         TypeError, "Received: compile_kwargs='adam'"),
        (lambda: BNPlacementHyperModel(_twice_named()), ValueError,
         "Received: layers named ['same'] more than once"),
    ],
)
def test_errors(make, error, message):
    with pytest.raises(error, match=re.escape(message) + "$"):
        make()


def test_arguments_after_model_are_keyword_only():
    with pytest.raises(
        TypeError,
        match=re.escape("BNPlacementHyperModel.__init__() takes 2 positional"),
    ):
        BNPlacementHyperModel(user_model(), ["layer-act"])
