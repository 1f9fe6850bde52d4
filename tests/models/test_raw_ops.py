"""Graph rewrites on Functional models with raw tensor operations
(`h * 2.0`, `keras.ops.relu(h)`), nested models, shared layers and several
inputs and outputs: the minimal reproductions of issue #13 and their
neighbours."""

import json

import keras
import numpy as np
import pytest

import bn_keras
from bn_keras.models._graph import LayerGraph
from tests.layer_test_case import randomize_weights
from tests.layer_test_case import sample_inputs
from tests.layer_test_case import to_numpy

TOLERANCE = 1e-5


def _random_bn(model, seed=0):
    for i, layer in enumerate(bn_keras.find_batchnorm(model)):
        randomize_weights(layer, seed=seed + i)


def _assert_same_predictions(new, model, x, tolerance=TOLERANCE):
    np.testing.assert_allclose(
        to_numpy(new(x, training=False)),
        to_numpy(model(x, training=False)),
        rtol=tolerance,
        atol=tolerance,
    )


def _kinds(model):
    return [type(op).__name__ for op in model.operations]


def _identity(bn):
    """Moving statistics that make an inference BN the identity."""
    channels = bn.moving_mean.shape[0]
    bn.moving_variance.assign(np.full(channels, 1.0 - bn.epsilon, "float32"))


def _fold_repro():
    """The issue's first reproduction: a raw multiply after the BN."""
    inputs = keras.Input((8,), name="x")
    h = keras.layers.Dense(4, use_bias=False, name="dense")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    return keras.Model(inputs, keras.layers.Dense(2, name="out")(h * 2.0))


def _shared_producer():
    """A Dense output that feeds both a BN and a raw operation."""
    inputs = keras.Input((8,), name="x")
    d = keras.layers.Dense(4, use_bias=False, name="dense")(inputs)
    b = keras.layers.BatchNormalization(name="bn")(d)
    h = b + keras.ops.relu(d)
    return keras.Model(inputs, keras.layers.Dense(2, name="out")(h))


def test_layer_graph_has_raw_operations_as_nodes():
    graph = LayerGraph(_shared_producer(), "functional")
    assert [type(op).__name__ for op in graph.ops] == ["Relu", "Add"]
    relu, add = (op.name for op in graph.ops)
    assert graph.consumers["dense"] == ["bn", relu]
    assert graph.producers[add] == ["bn", relu]
    assert graph.consumers[add] == ["out"]
    assert graph.producers["out"] == [add]
    assert graph.by_name[add] is graph.ops[1]
    assert [layer.name for layer in graph.layers] == ["dense", "bn", "out"]


def test_fold_through_a_raw_multiply():
    model = _fold_repro()
    _random_bn(model)
    folded, report = bn_keras.fold_batchnorm(model, return_report=True)
    assert report == {
        "folded": [{"layer": "dense", "batchnorm": "bn"}],
        "kept": [],
    }
    assert _kinds(folded) == ["InputLayer", "Dense", "Multiply", "Dense"]
    _assert_same_predictions(folded, model, sample_inputs((5, 8)))


def test_bn_whose_producer_also_feeds_a_raw_op_is_not_folded():
    model = _shared_producer()
    _random_bn(model)
    folded, report = bn_keras.fold_batchnorm(model, return_report=True)
    assert report == {
        "folded": [],
        "kept": [
            {
                "batchnorm": "bn",
                "reason": "the output of 'dense' is used elsewhere too",
            }
        ],
    }
    assert _kinds(folded) == _kinds(model)
    _assert_same_predictions(folded, model, sample_inputs((5, 8)))


def test_bn_after_a_raw_op_is_kept_with_the_op_named():
    inputs = keras.Input((8,))
    h = keras.layers.Dense(4, name="dense")(inputs) * 2.0
    outputs = keras.layers.BatchNormalization(name="bn")(h)
    model = keras.Model(inputs, outputs)
    _, report = bn_keras.fold_batchnorm(model, return_report=True)
    multiply = model.operations[2].name
    assert report["kept"] == [
        {"batchnorm": "bn", "reason": f"it follows '{multiply}' (Multiply)"}
    ]


def test_insert_before_a_raw_add():
    # The second reproduction: `hidden` feeds `out` through the add,
    # so it is not an output layer and gets its BN.
    inputs = keras.Input((8,), name="x")
    h = keras.layers.Dense(4, name="hidden")(inputs) + 1.0
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(h))
    new = bn_keras.insert_batchnorm(model)
    assert _kinds(new) == [
        "InputLayer",
        "Dense",
        "BatchNormalization",
        "Add",
        "Dense",
    ]
    assert new.operations[2].name == "hidden_bn"
    _identity(new.get_layer("hidden_bn"))
    _assert_same_predictions(new, model, sample_inputs((5, 8)))


def test_input_batchnorm_feeds_a_raw_op_on_the_input():
    inputs = keras.Input((3,), name="x")
    outputs = keras.layers.Dense(2, name="out")(inputs * 2.0)
    model = keras.Model(inputs, outputs)
    new = bn_keras.insert_batchnorm(
        model, placement="layer-act", input_batchnorm=True
    )
    bn = new.get_layer("x_bn")
    mean = np.array([1.0, -2.0, 0.5], "float32")
    variance = np.array([4.0, 0.25, 1.0], "float32")
    bn.moving_mean.assign(mean)
    bn.moving_variance.assign(variance)
    x = sample_inputs((4, 3))
    expected = model((x - mean) / np.sqrt(variance + bn.epsilon))
    np.testing.assert_allclose(
        to_numpy(new(x)), to_numpy(expected), rtol=1e-5, atol=1e-5
    )


def test_output_layers_see_through_raw_ops():
    inputs = keras.Input((8,))
    h = keras.ops.relu(keras.layers.Dense(4, name="hidden")(inputs))
    out = keras.layers.Dense(2, name="out")(h) * 0.5
    model = keras.Model(inputs, out)
    found = bn_keras.models._graph.output_layers(model)
    assert [layer.name for layer in found] == ["out"]


def _backbone():
    """A small Functional backbone with a conv BN and raw operations."""
    inputs = keras.Input((6, 6, 3))
    h = keras.layers.Conv2D(4, 3, use_bias=False, name="conv")(inputs)
    h = keras.layers.BatchNormalization(name="conv_bn")(h)
    h = h * keras.ops.relu6(h + 3.0) / 6.0  # hard-swish
    return keras.Model(inputs, h, name="backbone")


def _head_on_backbone():
    """A transfer-learning head on a nested backbone."""
    backbone = _backbone()
    inputs = keras.Input((6, 6, 3), name="image")
    h = keras.layers.GlobalAveragePooling2D(name="gap")(backbone(inputs))
    h = keras.layers.Dense(5, use_bias=False, name="fc")(h)
    h = keras.layers.BatchNormalization(name="fc_bn")(h)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(h))


def test_nested_backbone_with_raw_ops_folds():
    model = _head_on_backbone()
    _random_bn(model)
    folded, report = bn_keras.fold_batchnorm(model, return_report=True)
    assert report["folded"] == [
        {"layer": "fc", "batchnorm": "fc_bn"},
        {"layer": "backbone/conv", "batchnorm": "backbone/conv_bn"},
    ]
    assert bn_keras.find_batchnorm(folded) == []
    x = sample_inputs((2, 6, 6, 3))
    _assert_same_predictions(folded, model, x, tolerance=1e-4)


def test_nested_backbone_with_raw_ops_converts():
    model = _head_on_backbone()
    _random_bn(model)
    converted = bn_keras.convert_batchnorm(model, "renorm")
    found = bn_keras.find_batchnorm(converted)
    assert [(bn.name, type(bn).__name__) for bn in found] == [
        ("conv_bn", "BatchRenormalization"),
        ("fc_bn", "BatchRenormalization"),
    ]
    inner = converted.get_layer("backbone").get_layer("conv_bn")
    assert inner is found[0]
    _assert_same_predictions(converted, model, sample_inputs((2, 6, 6, 3)))


def test_nested_backbone_with_raw_ops_gets_bn_inserted():
    model = _head_on_backbone()
    new = bn_keras.insert_batchnorm(model, layers=["conv"])
    backbone = new.get_layer("backbone")
    assert _kinds(backbone)[:4] == [
        "InputLayer",
        "Conv2D",
        "BatchNormalization",
        "BatchNormalization",
    ]
    assert backbone.operations[2].name == "conv_bn_1"
    np.testing.assert_array_equal(
        to_numpy(backbone.get_layer("conv").kernel),
        to_numpy(model.get_layer("backbone").get_layer("conv").kernel),
    )


def _shared_and_multi_io():
    """Two named inputs, a Dense shared by both, raw ops, two outputs."""
    a = keras.Input((4,), name="a")
    b = keras.Input((4,), name="b")
    shared = keras.layers.Dense(3, use_bias=False, name="shared")
    ha, hb = shared(a), shared(b)
    bn_a = keras.layers.BatchNormalization(name="bn_a")(ha)
    mixed = bn_a * keras.ops.sigmoid(hb)
    c = keras.layers.Dense(3, use_bias=False, name="c")(mixed)
    c = keras.layers.BatchNormalization(name="bn_c")(c)
    first = keras.layers.Dense(2, name="first")(c)
    second = keras.layers.Dense(1, name="second")(c - 1.0)
    return keras.Model({"a": a, "b": b}, [first, second])


def _multi_io_inputs():
    return {"a": sample_inputs((3, 4)), "b": sample_inputs((3, 4), seed=1)}


def _assert_same_outputs(new, model, x, tolerance):
    for got, want in zip(new(x), model(x)):
        np.testing.assert_allclose(
            to_numpy(got), to_numpy(want), rtol=tolerance, atol=tolerance
        )


def _calls(model, name):
    (entry,) = [e for e in model.get_config()["layers"] if e["name"] == name]
    return len(entry["inbound_nodes"])


def test_shared_layer_and_several_inputs_and_outputs_fold():
    model = _shared_and_multi_io()
    _random_bn(model)
    folded, report = bn_keras.fold_batchnorm(model, return_report=True)
    assert report["folded"] == [{"layer": "c", "batchnorm": "bn_c"}]
    assert report["kept"] == [
        {"batchnorm": "bn_a", "reason": "'shared' is called more than once"}
    ]
    assert _calls(folded, "shared") == 2
    _assert_same_outputs(folded, model, _multi_io_inputs(), 1e-4)


def test_shared_layer_and_several_inputs_and_outputs_convert():
    model = _shared_and_multi_io()
    _random_bn(model)
    converted = bn_keras.convert_batchnorm(model, "ghost")
    assert _calls(converted, "shared") == 2
    assert converted.get_layer("shared") is not model.get_layer("shared")
    assert {type(bn).__name__ for bn in bn_keras.find_batchnorm(converted)} == {
        "GhostBatchNormalization"
    }
    _assert_same_outputs(converted, model, _multi_io_inputs(), TOLERANCE)


def test_shared_layer_and_several_inputs_and_outputs_insert():
    model = _shared_and_multi_io()
    new = bn_keras.insert_batchnorm(model, layers=["shared"])
    # One new BN per call of the shared layer.
    assert _kinds(new).count("BatchNormalization") == 4
    for name in ("shared_bn", "shared_bn_1"):
        _identity(new.get_layer(name))
    _assert_same_outputs(new, model, _multi_io_inputs(), 1e-5)


def test_rewritten_raw_op_model_saves_and_loads(tmp_path):
    model = _shared_producer()
    _random_bn(model)
    folded = bn_keras.fold_batchnorm(model)
    path = tmp_path / "folded.keras"
    folded.save(path)
    loaded = keras.saving.load_model(path)
    _assert_same_predictions(loaded, model, sample_inputs((5, 8)))
    config = json.dumps(loaded.get_config())
    assert '"class_name": "Relu"' in config and '"class_name": "Add"' in config


def _lambda_model():
    inputs = keras.Input((4,), name="x")
    h = keras.layers.Dense(4, use_bias=False, name="dense")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Lambda(lambda t: t * 2.0, name="times2")(h)
    return keras.Model(inputs, keras.layers.Dense(2, name="out")(h))


@pytest.mark.parametrize(
    "rewrite",
    [
        bn_keras.fold_batchnorm,
        lambda model: bn_keras.insert_batchnorm(model, layers=["out"]),
        lambda model: bn_keras.convert_batchnorm(model, "ghost"),
    ],
    ids=["fold", "insert", "convert"],
)
def test_a_lambda_layer_is_used_as_it_is(rewrite):
    # Keras's safe mode refuses to copy a Python lambda from its config;
    # like a raw op, the Lambda layer has no weights and is reused.
    model = _lambda_model()
    _random_bn(model)
    new = rewrite(model)
    assert new.get_layer("times2") is model.get_layer("times2")
    for bn in bn_keras.find_batchnorm(new):
        if bn.name == "out_bn":
            _identity(bn)
    _assert_same_predictions(new, model, sample_inputs((3, 4)))


@pytest.mark.parametrize(
    "rewrite",
    [
        bn_keras.fold_batchnorm,
        bn_keras.insert_batchnorm,
        lambda model: bn_keras.convert_batchnorm(model, "renorm"),
    ],
    ids=["fold", "insert", "convert"],
)
def test_rewrites_leave_the_original_graph_as_it_was(rewrite):
    model = _shared_producer()
    before = model.get_config()
    rewrite(model)
    assert model.get_config() == before
