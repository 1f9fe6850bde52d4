"""`bn_keras.cli.experiment`: configurations, their models, and results."""

import keras
import numpy as np

import bn_keras
from bn_keras.cli import common
from bn_keras.cli import datasets
from bn_keras.cli import experiment


def test_input_normalization_configurations_and_their_models():
    configurations = experiment.configurations(
        ("layer-bn-act",),
        ("batch",),
        common.resolve_input_normalizations(["renorm,none", "renorm"]),
    )
    assert [(c.slug, c.label(), c.is_baseline) for c in configurations] == [
        ("input-renorm_no-bn", "input renorm", False),
        (
            "input-renorm_layer-bn-act_batch",
            "input renorm + layer-bn-act + batch",
            False,
        ),
        ("no-bn", "no BN", True),
        ("layer-bn-act_batch", "layer-bn-act + batch", False),
    ]
    assert common.resolve_input_normalizations(None) == ("none",)
    data = datasets.load("scales")
    keras.utils.set_random_seed(0)
    base = experiment.build_base_model("mlp", data)
    for configuration, count in zip(configurations, (1, 3)):
        model = experiment.make_model(base, configuration, 8, 800, 0.9)
        layers = bn_keras.find_batchnorm(model)
        assert len(layers) == count
        first = layers[0]  # the input's: cumulative, unclipped renorm
        assert first.name == model.layers[0].name
        assert (first.renorm, first.momentum, first.renorm_momentum) == (
            True,
            None,
            None,
        )
        assert (first.center, first.scale) == (False, False)
        # The layers' BN: the run's momentum.
        assert all(layer.momentum == 0.9 for layer in layers[1:])


def test_configurations_and_their_models():
    configurations = experiment.configurations(
        common.resolve_placements(
            ["none", "pre_activation", "layer-bn-act"]
        ),
        common.resolve_normalizations(["renorm", "ghost"]),
    )
    assert [c.slug for c in configurations] == [
        "no-bn",
        "bn-act-layer_renorm",
        "bn-act-layer_ghost",
        "layer-bn-act_renorm",
        "layer-bn-act_ghost",
    ]
    data = datasets.load("wine")
    keras.utils.set_random_seed(0)
    base = experiment.build_base_model("mlp", data)
    renorm = experiment.make_model(
        base, configurations[3], 8, total_steps=800, momentum=0.9
    )
    layers = bn_keras.find_batchnorm(renorm)
    assert len(layers) == 2  # none after the output layer
    for layer in layers:
        assert type(layer).__name__ == "BatchRenormalization"
        assert layer.momentum == 0.9 and layer.renorm_momentum == 0.9
        schedule = layer.get_config()["renorm_clipping"]["config"]
        assert (
            schedule["warmup_steps"],
            schedule["dmax_steps"],
            schedule["rmax_steps"],
        ) == (100, 500, 800)
    ghost = experiment.make_model(base, configurations[4], 8, 800, 0.95)
    for layer in bn_keras.find_batchnorm(ghost):
        assert (layer.virtual_batch_size, layer.momentum) == (8, 0.95)
    # Every configuration starts from the base model's weights.
    no_bn = experiment.make_model(base, configurations[0], 8, 800)
    assert bn_keras.find_batchnorm(no_bn) == []
    for a, b in zip(no_bn.get_weights(), base.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(
        ghost.get_layer(base.layers[-1].name).get_weights()[0],
        base.layers[-1].get_weights()[0],
    )
