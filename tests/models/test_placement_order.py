"""Each placement builds the order its name spells, read from the graph.

For every pair of Dense or convolution layers connected in the rewritten
model (and from the model input to the first ones), the batch
normalization and activation steps on the path between them, in forward
order, layers without weights (pooling, `Flatten`) left out. A layer's own
activation counts as a step after it. Models: a Sequential MLP and CNN,
a Functional model with a residual add, and the command line's own
`bn-keras compare` models, built as `compare` builds them.
"""

import types

import keras
import numpy as np
import pytest

import bn_keras
from bn_keras.cli.experiment import Configuration
from bn_keras.cli.experiment import build_base_model
from bn_keras.cli.experiment import make_model
from bn_keras.models._graph import LayerGraph
from bn_keras.models._graph import model_kind
from tests.layer_test_case import sample_inputs
from tests.layer_test_case import to_numpy

WEIGHT_LAYERS = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D)
ACTIVATIONS = (
    keras.layers.Activation,
    keras.layers.ReLU,
    keras.layers.PReLU,
)

#: The steps between two weight layers, per placement, and which of the
#: two a BN there is named after (its owner).
BETWEEN = {
    "layer-bn-act": (["bn", "act"], "before"),
    "layer-act-bn": (["act", "bn"], "before"),
    "bn-act-layer": (["bn", "act"], "after"),
    "layer-act": (["act"], None),
}


def _has_activation(layer):
    activation = getattr(layer, "activation", None)
    return activation is not None and activation is not (
        keras.activations.linear
    )


def _step(layer):
    if isinstance(layer, keras.layers.BatchNormalization):
        return "bn"
    if isinstance(layer, ACTIVATIONS):
        return "act"
    return None


def paths(model):
    """`{(source, target): [(step, layer name), ...]}` for every path from a
    weight layer (or `"input"`) to the next weight layer."""
    graph = LayerGraph(model, model_kind(model, "test"))
    found = {}

    def walk(node, trail, target):
        layer = graph.by_name[node]
        if isinstance(layer, WEIGHT_LAYERS):
            steps = [("act", node)] if _has_activation(layer) else []
            found.setdefault((node, target), []).append(steps + trail)
            return
        step = _step(layer)
        trail = ([(step, node)] if step else []) + trail
        if not graph.producers[node]:
            found.setdefault(("input", target), []).append(trail)
        for producer in graph.producers[node]:
            walk(producer, trail, target)

    for layer in graph.layers:
        if not isinstance(layer, WEIGHT_LAYERS):
            continue
        if not graph.producers[layer.name]:
            found.setdefault(("input", layer.name), []).append([])
        for producer in graph.producers[layer.name]:
            walk(producer, [], layer.name)
    return found


def assert_order(model, placement):
    """Every path between two weight layers has the placement's steps, its
    BN named after its owner; none from the input to the first ones."""
    expected, owner = BETWEEN[placement]
    found = paths(model)
    assert found, "no weight layers"
    for (source, target), trails in found.items():
        for trail in trails:
            steps = [step for step, _ in trail]
            if source == "input":
                assert steps == [], (source, target, trail)
                continue
            assert steps == expected, (placement, source, target, trail)
            for step, name in trail:
                if step == "bn":
                    named = source if owner == "before" else target
                    assert name == f"{named}_bn", (placement, trail)


def _mlp():
    return keras.Sequential(
        [
            keras.Input((4, 3), name="x"),
            keras.layers.Flatten(name="flat"),
            keras.layers.Dense(6, activation="relu", name="h1"),
            keras.layers.Dense(5, activation="relu", name="h2"),
            keras.layers.Dense(2, name="out"),
        ]
    )


def _cnn():
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3, activation="relu", name="c1"),
            keras.layers.MaxPooling2D(name="pool"),
            keras.layers.Conv2D(4, 3, name="c2"),
            keras.layers.ReLU(name="r2"),
            keras.layers.GlobalAveragePooling2D(name="gap"),
            keras.layers.Dense(3, name="logits"),
        ]
    )


@pytest.mark.parametrize("placement", list(BETWEEN))
@pytest.mark.parametrize("make", [_mlp, _cnn], ids=["mlp", "cnn"])
def test_sequential_models(make, placement):
    model = make()
    new = bn_keras.insert_batchnorm(model, placement=placement)
    assert_order(new, placement)
    # No BN after the output layer, nor one before the first layer.
    assert new.layers[-1].name == model.layers[-1].name
    assert isinstance(new.layers[0], keras.layers.Flatten) or (
        new.layers[0].name == model.layers[0].name
    )


def test_the_pre_activation_graph_of_the_mlp():
    new = bn_keras.insert_batchnorm(_mlp(), placement="bn-act-layer")
    assert [layer.name for layer in new.layers] == [
        "flat",
        "h1",
        "h2_bn",
        "h2_act",
        "h2",
        "out_bn",
        "out_act",
        "out",
    ]
    for name in ("h1", "h2"):  # the activations left their layers
        assert new.get_layer(name).get_config()["activation"] == "linear"


def _residual():
    inputs = keras.Input((8, 8, 3), name="image")
    a = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")(
        inputs
    )
    b = keras.layers.Conv2D(4, 3, padding="same", name="c2")(a)
    b = keras.layers.ReLU(name="r2")(b)
    b = keras.layers.Conv2D(4, 1, padding="same", name="c3")(b)
    c = keras.layers.Add(name="add")([a, b])
    d = keras.layers.GlobalAveragePooling2D(name="gap")(c)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(d))


def test_residual_model_edges():
    """The branch c1 -> c2 -> c3 is pre-activation (BN, activation before
    c2 and c3); the add receives what it received (c1's ReLU, c3's linear
    output); the logits read an add's average, which has no activation to
    move: BN alone."""
    new = bn_keras.insert_batchnorm(_residual(), placement="bn-act-layer")
    found = paths(new)
    assert found[("c1", "c2")] == [[("bn", "c2_bn"), ("act", "c2_act")]]
    assert found[("c2", "c3")] == [[("bn", "c3_bn"), ("act", "r2")]]
    assert sorted(found[("c1", "logits")]) == [
        [("act", "c1_act"), ("bn", "logits_bn")]
    ]
    assert found[("c3", "logits")] == [[("bn", "logits_bn")]]
    assert found[("input", "c1")] == [[]]
    # Before training, the function is the original one up to the new BN
    # layers, which start as the identity but for epsilon.
    for bn in bn_keras.find_batchnorm(new):
        bn.epsilon = 1e-12
    x = sample_inputs((2, 8, 8, 3))
    np.testing.assert_allclose(
        to_numpy(new(x)), to_numpy(_residual_with(new)(x)), atol=1e-5
    )


def _residual_with(new):
    """The original residual model with `new`'s weights."""
    model = _residual()
    for layer in model.layers:
        if layer.weights:
            layer.set_weights(new.get_layer(layer.name).get_weights())
    return model


@pytest.mark.parametrize("placement", ["layer-bn-act", "layer-act-bn"])
def test_residual_model_post_activation(placement):
    new = bn_keras.insert_batchnorm(_residual(), placement=placement)
    found = paths(new)
    expected, _ = BETWEEN[placement]
    assert [s for s, _ in found[("c1", "c2")][0]] == expected
    assert [s for s, _ in found[("c2", "c3")][0]] == expected


def test_activation_feeding_several_layers_is_shared_by_their_paths():
    """A stand-alone activation feeding two convolutions (a projection
    shortcut and a branch): each gets its own BN before the activation,
    which is shared (the same layer, PReLU's weights kept)."""
    inputs = keras.Input((6, 6, 3))
    h = keras.layers.Conv2D(4, 3, padding="same", name="stem")(inputs)
    h = keras.layers.PReLU(name="act")(h)
    branch = keras.layers.Conv2D(4, 3, padding="same", name="branch")(h)
    shortcut = keras.layers.Conv2D(4, 1, name="shortcut")(h)
    outputs = keras.layers.Add()([branch, shortcut])
    model = keras.Model(inputs, outputs)
    model.get_layer("act").set_weights([np.full((6, 6, 4), 0.3, "float32")])
    new = bn_keras.insert_batchnorm(model, placement="bn-act-layer")
    found = paths(new)
    # The graph of layers merges the two calls of the shared activation:
    # both BN layers are read on each path; the calls are checked below.
    both = [[("bn", "branch_bn"), ("act", "act")]]
    both.append([("bn", "shortcut_bn"), ("act", "act")])
    assert sorted(found[("stem", "branch")]) == both
    assert sorted(found[("stem", "shortcut")]) == both
    assert sum(layer.name == "act" for layer in new.layers) == 1
    config = new.get_config()["layers"]
    calls = {
        entry["name"]: bn_keras.models._graph._history_refs(
            entry["inbound_nodes"]
        )
        for entry in config
    }
    assert calls["act"] == ["branch_bn", "shortcut_bn"]
    assert calls["branch_bn"] == calls["shortcut_bn"] == ["stem"]
    alpha = new.get_layer("act").get_weights()[0]
    np.testing.assert_array_equal(alpha, np.float32(0.3))


def _dataset(images):
    """What `build_base_model` reads of a dataset: digits' shape."""
    return types.SimpleNamespace(
        name="digits",
        image_shape=(8, 8, 1) if images else None,
        num_features=64,
        num_classes=10,
        task="classification",
    )


@pytest.mark.parametrize("quick", [False, True], ids=["full", "quick"])
@pytest.mark.parametrize("kind", ["cnn", "mlp"])
@pytest.mark.parametrize("placement", list(BETWEEN))
def test_compare_models(kind, quick, placement):
    """The models `bn-keras compare` trains, built as it builds them."""
    base = build_base_model(kind, _dataset(kind == "cnn"), quick=quick)
    normalization = "batch" if placement != "layer-act" else None
    configuration = Configuration(placement, normalization, "none")
    model = make_model(base, configuration, None, total_steps=10)
    assert_order(model, placement)
    weight_layers = [
        layer for layer in model.layers if isinstance(layer, WEIGHT_LAYERS)
    ]
    if placement != "layer-act":
        # A BN between each pair of consecutive weight layers.
        assert len(bn_keras.find_batchnorm(model)) == len(weight_layers) - 1
