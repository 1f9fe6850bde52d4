"""`bn_keras.cli.experiment`: configurations, their models, and results."""

import keras
import numpy as np

import bn_keras
from bn_keras.cli import common
from bn_keras.cli import datasets
from bn_keras.cli import experiment
from bn_keras.cli._comparison_hparams import configuration_hparams
from bn_keras.cli.settings import ComparisonSettings


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


def _comparison(dataset, placements, normalizations=("batch",), **options):
    settings = ComparisonSettings(
        model=options.pop("model", "mlp"),
        placements=placements,
        normalizations=normalizations,
        epochs=2,
        batch_size=32,
        learning_rate=1e-3,
        seed=0,
        quick=True,
        momentum=0.99,
        ghost_batch_size=8,
        **options,
    )
    return experiment.Comparison(settings, datasets.load(dataset))


def test_placements_that_build_one_network_are_trained_once():
    """On compare's chains, pre-activation builds layer-bn-act's network:
    one configuration per normalization and input normalization names
    both; layer-act-bn stays apart."""
    comparison = _comparison(
        "digits",
        ("bn-act-layer", "layer-act-bn", "layer-bn-act"),
        ("batch", "ghost"),
        input_batchnorms=("none", "renorm"),
    )
    assert comparison.requested == 14
    assert [
        (c.slug, c.label(8), c.placements) for c in comparison.configurations
    ] == [
        ("no-bn", "no BN", "layer-act"),
        (
            "bn-act-layer=layer-bn-act_batch",
            "bn-act-layer = layer-bn-act + batch",
            "bn-act-layer = layer-bn-act",
        ),
        (
            "bn-act-layer=layer-bn-act_ghost",
            "bn-act-layer = layer-bn-act + ghost(8)",
            "bn-act-layer = layer-bn-act",
        ),
        ("layer-act-bn_batch", "layer-act-bn + batch", "layer-act-bn"),
        ("layer-act-bn_ghost", "layer-act-bn + ghost(8)", "layer-act-bn"),
        ("input-renorm_no-bn", "input renorm", "layer-act"),
        (
            "input-renorm_bn-act-layer=layer-bn-act_batch",
            "input renorm + bn-act-layer = layer-bn-act + batch",
            "bn-act-layer = layer-bn-act",
        ),
        (
            "input-renorm_bn-act-layer=layer-bn-act_ghost",
            "input renorm + bn-act-layer = layer-bn-act + ghost(8)",
            "bn-act-layer = layer-bn-act",
        ),
        (
            "input-renorm_layer-act-bn_batch",
            "input renorm + layer-act-bn + batch",
            "layer-act-bn",
        ),
        (
            "input-renorm_layer-act-bn_ghost",
            "input renorm + layer-act-bn + ghost(8)",
            "layer-act-bn",
        ),
    ]
    # The network trained is the first placement's.
    merged = comparison.configurations[1]
    names = [layer.name for layer in comparison._model(merged).layers]
    assert names[:3] == ["flatten", "dense", "dense_1_bn"]
    # One note, however many rows it covers; HParams name both.
    assert comparison.same_network_notes() == [
        "on this model, a chain without residual connections, "
        "pre-activation (bn-act-layer) builds the same network as "
        "layer-bn-act"
    ]
    hparams = configuration_hparams(merged, comparison.settings)
    assert hparams["placement"] == "bn-act-layer = layer-bn-act"


def test_the_cnn_merges_too_and_distinct_networks_stay_apart():
    comparison = _comparison(
        "digits",
        ("layer-bn-act", "bn-act-layer"),
        ("batch", "renorm"),
        model="cnn",
    )
    assert isinstance(comparison.base.layers[0], keras.layers.Conv2D)
    assert [c.slug for c in comparison.configurations] == [
        "no-bn",
        "layer-bn-act=bn-act-layer_batch",
        "layer-bn-act=bn-act-layer_renorm",
    ]
    apart = _comparison("digits", ("layer-act-bn", "bn-act-layer"))
    assert apart.requested == 3
    assert [c.slug for c in apart.configurations] == [
        "no-bn",
        "layer-act-bn_batch",
        "bn-act-layer_batch",
    ]
    assert apart.same_network_notes() == []


def test_merge_same_networks_by_signature_normalization_and_input():
    configurations = [
        experiment.Configuration("layer-bn-act", "batch"),
        experiment.Configuration("layer-act-bn", "batch"),
        experiment.Configuration("bn-act-layer", "batch"),
        experiment.Configuration("bn-act-layer", "renorm"),
        experiment.Configuration("bn-act-layer", "batch", "renorm"),
    ]
    # A signature that cannot tell any apart: the normalization and the
    # input normalization still do.
    merged = experiment.merge_same_networks(configurations, lambda c: "")
    assert [(c.placements, c.normalization) for c in merged] == [
        ("layer-bn-act = layer-act-bn = bn-act-layer", "batch"),
        ("bn-act-layer", "renorm"),
        ("bn-act-layer", "batch"),
    ]
    assert experiment.same_network_note(
        ("layer-bn-act", "layer-act-bn", "bn-act-layer"), chain=True
    ) == (
        "on this model, layer-act-bn and bn-act-layer build the same "
        "network as layer-bn-act (the same layers, wiring and initial "
        "weights)"
    )
    # Off a chain, the pre-activation sentence would not hold.
    assert "residual" not in experiment.same_network_note(
        ("layer-bn-act", "bn-act-layer"), chain=False
    )
