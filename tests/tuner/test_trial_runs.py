"""Trial run names and the HParams of a search space."""

import keras_tuner

from bn_keras.tuner import BNPlacementHyperModel
from bn_keras.tuner import BNSearchMLP
from bn_keras.tuner._trial_runs import MAX_CONFIGURATION_CHARS
from bn_keras.tuner._trial_runs import configuration_name
from bn_keras.tuner._trial_runs import group_name
from bn_keras.tuner._trial_runs import run_name
from bn_keras.tuner._trial_runs import trial_hparams
from tests.tuner.helpers import user_model


def slot(name, placement, normalization=None, momentum=0.9):
    values = {f"{name}/placement": placement}
    if normalization is not None:
        values[f"{name}/normalization"] = normalization
        values[f"{name}/momentum"] = momentum
    return values


def test_a_shared_choice_names_the_run():
    values = {**slot("batchnorm", "layer-bn-act", "batch"), "lr": 0.1}
    assert run_name("03", values) == "trial_03-layer-bn-act.batch"
    # No BN: the placement alone, whatever normalization is left in `values`.
    assert run_name("04", slot("batchnorm", "layer-act", "ghost")) == (
        "trial_04-layer-act"
    )


def test_per_layer_choices_in_order_with_repeats_counted():
    values = {
        "input_batchnorm": True,
        **slot("dense", "layer-bn-act", "batch"),
        **slot("dense_1", "layer-bn-act", "batch"),
        **slot("dense_2", "layer-act-bn", "renorm"),
        **slot("dense_3", "layer-bn-act", "batch"),
        **slot("out", "layer-act"),
    }
    assert run_name("12", values) == (
        "trial_12-input-bn_layer-bn-act.batch-x2_layer-act-bn.renorm_"
        "layer-bn-act.batch_layer-act"
    )
    values["input_batchnorm"] = False
    assert configuration_name(values).startswith("layer-bn-act.batch-x2_")
    # An input normalization chosen by name is named; "none" is not.
    values["input_batchnorm"] = "renorm"
    assert configuration_name(values).startswith(
        "input-renorm_layer-bn-act.batch-x2_"
    )
    values["input_batchnorm"] = "none"
    assert configuration_name(values).startswith("layer-bn-act.batch-x2_")


def test_later_executions_and_trials_without_slots():
    values = slot("batchnorm", "bn-act-layer", "ghost")
    assert run_name("1", values, execution=0) == "trial_1-bn-act-layer.ghost"
    assert run_name("1", values, execution=2) == (
        "trial_1-bn-act-layer.ghost-execution2"
    )
    assert run_name("7", {"learning_rate": 0.01}) == "trial_7"


def test_many_layers_are_summarized_by_count():
    """52 slots (MobileNetV2's BN layers), alternating choices."""
    values = {}
    for i in range(52):
        if i % 4 == 3:
            values.update(slot(f"conv_{i}", "layer-act"))
        elif i % 4 == 2:
            values.update(slot(f"conv_{i}", "bn-act-layer", "renorm"))
        else:
            values.update(slot(f"conv_{i}", "layer-bn-act", "batch"))
    name = configuration_name(values)
    assert name == (
        "mix_layer-bn-act.batch-x26_bn-act-layer.renorm-x13_layer-act-x13"
    )
    # In forward order it would be 13 times "layer-bn-act.batch-x2_..."
    # Every normalization somewhere: the rarest choices give way to "more".
    for i, (placement, normalization) in enumerate(
        [
            ("layer-act-bn", "ghost"),
            ("bn-act-layer", "batch"),
            ("layer-bn-act", "ghost"),
            ("bn-act-layer", "ghost"),
        ]
    ):
        values.update(slot(f"conv_{i * 2}", placement, normalization))
    name = configuration_name(values)
    assert name == (
        "mix_layer-bn-act.batch-x24_layer-act-x13_bn-act-layer.renorm-x11_"
        "layer-act-bn.ghost-x1_more"
    )
    assert len(name) <= MAX_CONFIGURATION_CHARS


def test_values_of_a_hypermodel_of_your_own_make_a_folder_name():
    values = {
        "head/placement": "after pooling",  # not a placement name
        "body/placement": "layer-bn-act",
        "body/normalization": "group/4",
    }
    assert run_name("2", values) == (
        "trial_2-after-pooling_layer-bn-act.group-4"
    )


def test_names_are_the_same_for_the_same_values():
    first = {
        **slot("a", "layer-act-bn", "batch"),
        **slot("b", "layer-act"),
    }
    again = dict(first)
    assert run_name("5", first) == run_name("5", again)
    assert run_name("5", first) != run_name("6", first)


def test_trial_hparams_one_column_per_slot_of_what_varies():
    """Each slot is one column (placement, normalization and the settings
    that vary), so that every choice that varies fits the five columns
    TensorBoard shows; what the space fixes (the momentum) is left out."""
    hypermodel = BNPlacementHyperModel(
        user_model(),
        placements=["layer-bn-act", "layer-act"],
        normalizations=["batch", "ghost"],
        momentum=0.9,
    )
    hp = keras_tuner.HyperParameters()
    hypermodel.build(hp)
    values = {
        "hidden_1/placement": "layer-bn-act",
        "hidden_1/normalization": "ghost",
        "hidden_1/momentum": 0.9,
        "hidden_1/virtual_batch_size": 32,
        "hidden_2/placement": "layer-act",
        "input_batchnorm": True,
    }
    assert trial_hparams(hp.space, values) == {
        "input_batchnorm": True,
        "hidden_1": "layer-bn-act.ghost vbs=32",
        "hidden_2": "layer-act",
    }
    assert group_name("07") == "trial_07"


def test_trial_hparams_of_a_ready_made_hypermodel():
    """A block beyond the trial's depth, and its width, are "none" (not
    missing: the parallel-coordinates view keeps the trial); numbers that
    are always active stay numbers; conditional ones become strings, one
    type in every trial."""
    hypermodel = BNSearchMLP(
        3, input_shape=(8,), num_layers=[1, 2], normalizations=["batch"]
    )
    hp = keras_tuner.HyperParameters()
    hypermodel.build(hp)
    columns = trial_hparams(hp.space, hp.values)
    assert columns == {
        "input_batchnorm": False,
        "block_0": "layer-bn-act.batch m=0.9",
        "block_1": "none",
        "num_layers": 1,
        "block_0/units": 32,
        "block_1/units": "none",
        "learning_rate": 0.001,
    }
    deeper = {
        **hp.values,
        "num_layers": 2,
        "block_1/units": 16,
        "block_1/placement": "layer-act",
    }
    columns = trial_hparams(hp.space, deeper)
    assert (columns["block_1"], columns["block_1/units"]) == ("layer-act", "16")
