"""`bn_hyperparameters`: names, conditions, pinned values, errors."""

import re

import keras
import keras_tuner
import numpy as np
import pytest

import bn_keras
from bn_keras.tuner import bn_hyperparameters


def conditions_of(hp):
    """`{name: [(parent, parent values), ...]}` for the declared space."""
    return {
        p.name: [(c.name, list(c.values)) for c in p.conditions]
        for p in hp.space
    }


def block_normalization(kwargs, units=4):
    """The BN layer a BNBlock builds from the returned kwargs."""
    block = bn_keras.layers.BNBlock(
        keras.layers.Dense(units), activation="relu", **kwargs
    )
    block(np.ones((4, 3), "float32"), training=True)
    return block


def test_declares_stable_names_with_conditions():
    hp = keras_tuner.HyperParameters()
    bn_hyperparameters(hp, "block_0")
    with_bn = ["layer-bn-act", "layer-act-bn", "bn-act-layer"]
    placement = ("block_0/placement", with_bn)
    assert conditions_of(hp) == {
        "block_0/placement": [],
        "block_0/normalization": [placement],
        "block_0/momentum": [placement],
        "block_0/virtual_batch_size": [
            placement,
            ("block_0/normalization", ["ghost"]),
        ],
        "block_0/rmax": [placement, ("block_0/normalization", ["renorm"])],
        "block_0/dmax": [placement, ("block_0/normalization", ["renorm"])],
        "block_0/warmup_steps": [
            placement,
            ("block_0/normalization", ["renorm"]),
        ],
        "block_0/ramp_steps": [
            placement,
            ("block_0/normalization", ["renorm"]),
        ],
    }
    values = {p.name: list(getattr(p, "values", [p.default])) for p in hp.space}
    assert values["block_0/placement"] == [*with_bn, "layer-act"]
    assert values["block_0/normalization"] == ["batch", "ghost", "renorm"]
    assert values["block_0/momentum"] == [0.9, 0.99]
    assert values["block_0/virtual_batch_size"] == [16, 32]
    # The defaults: the first candidates; only the active values are set.
    assert hp.values == {
        "block_0/placement": "layer-bn-act",
        "block_0/normalization": "batch",
        "block_0/momentum": 0.9,
    }


def test_same_names_whatever_the_values():
    names = []
    for placement in ["layer-bn-act", "layer-act"]:
        hp = keras_tuner.HyperParameters()
        hp.values["b/placement"] = placement
        bn_hyperparameters(hp, "b")
        names.append([p.name for p in hp.space])
    assert names[0] == names[1]
    assert len(names[0]) == 8


def test_alias_in_hp_is_refused():
    hp = keras_tuner.HyperParameters()
    hp.Fixed("b/placement", "before_activation")
    with pytest.raises(
        ValueError, match=re.escape("Received: b/placement='before_activation'")
    ):
        bn_hyperparameters(hp, "b")


@pytest.mark.parametrize(
    "pinned, expected",
    [
        (
            {"b/placement": "layer-act"},
            {"placement": "layer-act", "normalization": None},
        ),
        (
            {"b/placement": "layer-bn-act", "b/momentum": 0.99},
            {"placement": "layer-bn-act", "normalization": {"momentum": 0.99}},
        ),
        (
            {"b/placement": "layer-act-bn", "b/normalization": "batch"},
            {"placement": "layer-act-bn", "normalization": {"momentum": 0.9}},
        ),
        (
            {
                "b/placement": "bn-act-layer",
                "b/normalization": "ghost",
                "b/virtual_batch_size": 32,
            },
            {
                "placement": "bn-act-layer",
                "normalization": {"momentum": 0.9, "virtual_batch_size": 32},
            },
        ),
    ],
)
def test_pinned_values(pinned, expected):
    hp = keras_tuner.HyperParameters()
    for name, value in pinned.items():
        hp.Fixed(name, value)
    assert bn_hyperparameters(hp, "b") == expected


def test_pinned_renorm_schedule():
    hp = keras_tuner.HyperParameters()
    hp.Fixed("b/normalization", "renorm")
    hp.Fixed("b/warmup_steps", 10)
    kwargs = bn_hyperparameters(
        hp, "b", rmax=[2.0, 4.0], dmax=1.0, ramp_steps=[20, 40]
    )
    assert kwargs["placement"] == "layer-bn-act"
    normalization = kwargs["normalization"]
    assert normalization["renorm"] is True
    assert normalization["momentum"] == 0.9
    assert normalization["renorm_clipping"] == bn_keras.layers.RenormClipping(
        rmax=2.0, dmax=1.0, warmup_steps=10, rmax_steps=30, dmax_steps=30
    )
    assert "b/virtual_batch_size" not in hp.values
    assert hp.values["b/rmax"] == 2.0 and hp.values["b/ramp_steps"] == 20
    layer = block_normalization(kwargs).normalization
    assert layer.renorm and layer.virtual_batch_size is None
    assert layer.renorm_clipping.get_config() == {
        "rmax": 2.0,
        "dmax": 1.0,
        "warmup_steps": 10,
        "rmax_steps": 30,
        "dmax_steps": 30,
    }


@pytest.mark.parametrize(
    "normalization, check",
    [
        ("batch", lambda bn: not bn.renorm and bn.virtual_batch_size is None),
        ("ghost", lambda bn: bn.virtual_batch_size == 16 and not bn.renorm),
        ("renorm", lambda bn: bn.renorm and bn.virtual_batch_size is None),
    ],
)
def test_bnblock_takes_the_result(normalization, check):
    hp = keras_tuner.HyperParameters()
    hp.Fixed("b/normalization", normalization)
    hp.Fixed("b/momentum", 0.99)
    kwargs = bn_hyperparameters(
        hp, "b", normalization_kwargs={"epsilon": 1e-4}
    )
    block = block_normalization(kwargs)
    layer = block.normalization
    assert isinstance(layer, bn_keras.layers.BatchNormalization)
    assert check(layer)
    assert layer.momentum == 0.99 and layer.epsilon == 1e-4
    assert [type(s).__name__ for s in block.layers] == [
        "Dense",
        type(layer).__name__,
        "Activation",
    ]
    assert block.layer.use_bias is False  # BN's beta replaces the bias


def test_narrowed_choices_shrink_the_space():
    hp = keras_tuner.HyperParameters()
    kwargs = bn_hyperparameters(
        hp,
        "b",
        placements=["pre_activation", "none", "layer-act"],
        normalizations="ghost",
        momentum=0.5,
        virtual_batch_size=[8],
    )
    kinds = {p.name: type(p).__name__ for p in hp.space}
    assert kinds == {
        "b/placement": "Choice",
        "b/normalization": "Fixed",
        "b/momentum": "Fixed",
        "b/virtual_batch_size": "Fixed",
    }
    assert [p.values for p in hp.space if p.name == "b/placement"] == [
        ["bn-act-layer", "layer-act"]
    ]
    # Every placement has BN, or none has: no condition on the placement.
    hp = keras_tuner.HyperParameters()
    bn_hyperparameters(
        hp, "c", placements="layer-bn-act", normalizations="batch"
    )
    assert conditions_of(hp) == {
        "c/placement": [],
        "c/normalization": [],
        "c/momentum": [],
    }
    hp = keras_tuner.HyperParameters()
    assert bn_hyperparameters(hp, "d", placements=[None]) == {
        "placement": "layer-act",
        "normalization": None,
    }
    assert [p.name for p in hp.space] == ["d/placement"]
    assert kwargs["normalization"] == {"momentum": 0.5, "virtual_batch_size": 8}


def test_inactive_block_returns_none_but_declares_everything():
    hp = keras_tuner.HyperParameters()
    hp.Choice("depth", [1, 2])
    with hp.conditional_scope("depth", [2]):
        result = bn_hyperparameters(hp, "block_1")
    assert result is None
    names = {p.name for p in hp.space}
    assert {"block_1/placement", "block_1/virtual_batch_size"} <= names
    assert not any(name.startswith("block_1/") for name in hp.values)
    hp.values["depth"] = 2
    hp.ensure_active_values()  # as an oracle does for a new trial
    with hp.conditional_scope("depth", [2]):
        result = bn_hyperparameters(hp, "block_1")
    assert result["placement"] == hp.values["block_1/placement"]
    assert "block_1/placement" in hp.values


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"name": ""}, ValueError, "Received: name=''"),
        ({"placements": ["layer-bn-act", "bn-first"]}, ValueError,
         "Received: placements=['layer-bn-act', 'bn-first']"),
        ({"placements": []}, ValueError, "Received: placements=[]"),
        ({"normalizations": ["batch", "group"]}, ValueError,
         "Received: normalizations=['batch', 'group']"),
        ({"momentum": [0.9, 1.0]}, ValueError, "Received: momentum=[0.9, 1.0]"),
        ({"virtual_batch_size": 0}, ValueError,
         "Received: virtual_batch_size=0"),
        ({"virtual_batch_size": 8.5}, TypeError,
         "Received: virtual_batch_size=8.5"),
        ({"rmax": 0.5}, ValueError, "Received: rmax=0.5"),
        ({"warmup_steps": -1}, ValueError, "Received: warmup_steps=-1"),
        ({"normalization_kwargs": "synchronized"}, TypeError,
         "Received: normalization_kwargs='synchronized'"),
    ],
)
def test_errors_name_the_argument(kwargs, error, message):
    kwargs = {"name": "b", **kwargs}
    with pytest.raises(error, match=re.escape(message) + "$"):
        bn_hyperparameters(keras_tuner.HyperParameters(), **kwargs)
