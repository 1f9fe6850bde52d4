"""Trial run names and the HParams of a search space."""

import keras_tuner
import pytest

from bn_keras.tuner import BNPlacementHyperModel
from bn_keras.tuner import BNSearchMLP
from bn_keras.tuner._trial_runs import MAX_CONFIGURATION_CHARS
from bn_keras.tuner._trial_runs import configuration_name
from bn_keras.tuner._trial_runs import run_name
from bn_keras.tuner._trial_runs import search_hparams
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


def hparam_table(hparams):
    """`[(name in TensorBoard, displayed name, domain)]`."""
    table = []
    for hparam in hparams:
        domain = hparam.domain
        if domain is None:
            described = None
        elif hasattr(domain, "values"):
            described = domain.values
        else:
            described = (domain.min_value, domain.max_value)
        table.append((hparam.name, hparam.display_name, described))
    return table


def test_search_hparams_placements_then_normalizations_then_the_rest():
    hypermodel = BNPlacementHyperModel(
        user_model(),
        placements=["layer-bn-act", "layer-act"],
        normalizations=["batch", "ghost"],
        momentum=0.9,
    )
    hp = keras_tuner.HyperParameters()
    hypermodel.build(hp)
    table = hparam_table(search_hparams(hp.space))
    assert [name for name, _, _ in table] == [
        "1.hidden_1/placement",
        "1.hidden_2/placement",
        "2.hidden_1/normalization",
        "2.hidden_2/normalization",
        "3.hidden_1/momentum",
        "3.hidden_1/virtual_batch_size",
        "3.hidden_2/momentum",
        "3.hidden_2/virtual_batch_size",
        "3.input_batchnorm",
    ]
    domains = {display: domain for _, display, domain in table}
    assert domains["hidden_1/placement"] == ["layer-act", "layer-bn-act"]
    assert domains["hidden_2/normalization"] == ["batch", "ghost"]
    assert domains["hidden_1/momentum"] == [0.9]
    assert domains["hidden_1/virtual_batch_size"] == [16, 32]
    assert domains["input_batchnorm"] == [False, True]


@pytest.mark.parametrize(
    "declare, expected",
    [
        (lambda hp: hp.Int("units", 8, 64), (8, 64)),
        (lambda hp: hp.Int("units", 8, 32, step=8), [8, 16, 24, 32]),
        (
            lambda hp: hp.Float("learning_rate", 1e-4, 1e-2, sampling="log"),
            (1e-4, 1e-2),
        ),
        (lambda hp: hp.Float("dropout", 0.0, 0.5, step=0.25), [0.0, 0.25, 0.5]),
        (lambda hp: hp.Choice("units", [64, 16, 32]), [16, 32, 64]),
    ],
)
def test_search_hparams_domains_of_number_hyperparameters(declare, expected):
    hp = keras_tuner.HyperParameters()
    declare(hp)
    ((_, _, domain),) = hparam_table(search_hparams(hp.space))
    assert domain == pytest.approx(expected)


def test_search_hparams_of_a_ready_made_hypermodel_rank_its_blocks():
    hypermodel = BNSearchMLP(
        3, input_shape=(8,), num_layers=[1, 2], normalizations=["batch"]
    )
    hp = keras_tuner.HyperParameters()
    hypermodel.build(hp)
    names = [h.name for h in search_hparams(hp.space)]
    assert names[:2] == ["1.block_0/placement", "1.block_1/placement"]
    assert names[2:4] == ["2.block_0/normalization", "2.block_1/normalization"]
    assert all(name.startswith("3.") for name in names[4:])
    assert "3.learning_rate" in names and "3.num_layers" in names
