"""`bn_keras.registry`: every name resolved, every table rendered, here."""

import re

import keras
import pytest

import bn_keras
from bn_keras import registry

PLACEMENT_TABLE = """\
  layer-bn-act (before_activation)   layer, BN, activation
  layer-act-bn (after_activation)    layer, activation, BN
  bn-act-layer (pre_activation)      BN, activation, layer
  layer-act (none)                   layer, activation (no BN)"""


def test_placement_aliases():
    assert registry.placement_aliases("layer-bn-act") == ["before_activation"]
    assert registry.placement_aliases("AFTER_ACTIVATION") == [
        "after_activation"
    ]
    assert registry.placement_aliases(None) == ["none"]


def test_valid_placement_names_for_python_and_the_command_line():
    assert registry.valid_placement_names() == (
        "'layer-bn-act' (or 'before_activation'), 'layer-act-bn' (or "
        "'after_activation'), 'bn-act-layer' (or 'pre_activation'), "
        "'layer-act' (or 'none' or None)"
    )
    assert registry.valid_placement_names(quoted=False) == (
        "layer-bn-act (or before_activation), layer-act-bn (or "
        "after_activation), bn-act-layer (or pre_activation), layer-act (or "
        "none)"
    )


def test_placement_table():
    assert registry.placement_table() == PLACEMENT_TABLE
    lines = registry.placement_table(indent=0, width=20).splitlines()
    assert lines[3] == "layer-act (none)     layer, activation (no BN)"


def test_unknown_placement_message_uses_the_one_list():
    with pytest.raises(ValueError) as info:
        registry.get_placement("after_dense")
    assert str(info.value) == (
        f"Unknown placement. Valid placements: "
        f"{registry.valid_placement_names()}. "
        "Received: placement='after_dense'"
    )


@pytest.mark.parametrize(
    "given, name",
    [("batch", "batch"), (" Ghost ", "ghost"), ("RENORM", "renorm")],
)
def test_get_normalization_name(given, name):
    assert registry.get_normalization_name(given) == name


@pytest.mark.parametrize("given", ["group", "", None, 3, "batch norm"])
def test_unknown_normalization_name(given):
    with pytest.raises(ValueError) as info:
        registry.get_normalization_name(given)
    assert str(info.value) == (
        "Unknown normalization. Valid names: 'batch', 'ghost', 'renorm'. "
        f"Received: normalization={given!r}"
    )


def test_get_normalization_checks_names_in_the_same_place():
    with pytest.raises(ValueError) as info:
        registry.get_normalization("Group")
    assert str(info.value).endswith("Received: normalization='Group'")
    assert "'batch', 'ghost', 'renorm'" in str(info.value)


def test_normalization_for_run_batch():
    layer = registry.normalization_for_run("Batch", momentum=0.9)
    assert type(layer) is bn_keras.layers.BatchNormalization
    assert layer.momentum == 0.9
    assert layer.virtual_batch_size is None and not layer.renorm


def test_normalization_for_run_ghost():
    layer = registry.normalization_for_run(
        "ghost", momentum=0.95, ghost_batch_size=8, total_steps=800
    )
    assert type(layer) is bn_keras.layers.GhostBatchNormalization
    assert (layer.virtual_batch_size, layer.momentum) == (8, 0.95)
    default = registry.normalization_for_run("ghost")
    assert (default.virtual_batch_size, default.momentum) == (32, 0.99)


def test_normalization_for_run_renorm_scales_the_schedule():
    layer = registry.normalization_for_run(
        "renorm", momentum=0.9, ghost_batch_size=8, total_steps=800
    )
    assert type(layer) is bn_keras.layers.BatchRenormalization
    assert (layer.momentum, layer.renorm_momentum) == (0.9, 0.9)
    assert layer.virtual_batch_size is None
    # The paper's 5000 / 25000 / 40000 steps times 800 / 40000.
    assert layer.renorm_clipping == bn_keras.layers.RenormClipping(
        warmup_steps=100, rmax_steps=800, dmax_steps=500
    )
    # Without a run length: the paper's schedule as it is.
    paper = registry.normalization_for_run("renorm")
    assert paper.renorm_clipping == bn_keras.layers.RenormClipping()
    assert (paper.momentum, paper.renorm_momentum) == (0.99, 0.99)


def test_normalization_for_run_builds_a_fresh_layer_each_time():
    first = registry.normalization_for_run("renorm", total_steps=80)
    second = registry.normalization_for_run("renorm", total_steps=80)
    assert first is not second and first.name != second.name
    model = keras.Sequential([keras.Input((3,)), first])
    assert model.output_shape == (None, 3)


@pytest.mark.parametrize(
    "kwargs, error, text",
    [
        ({"normalization": "group"}, ValueError, "normalization='group'"),
        (
            {"normalization": "renorm", "total_steps": 0},
            ValueError,
            "total_steps=0",
        ),
        (
            {"normalization": "batch", "momentum": 1.5},
            ValueError,
            "momentum=1.5",
        ),
    ],
)
def test_normalization_for_run_errors(kwargs, error, text):
    with pytest.raises(error, match=re.escape(f"Received: {text}")):
        registry.normalization_for_run(**kwargs)
