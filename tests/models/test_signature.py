"""`network_signature`: two models are the same network, names aside."""

import keras
import numpy as np
import pytest

import bn_keras
from bn_keras.cli import datasets
from bn_keras.cli import experiment
from bn_keras.models._signature import canonical_config
from bn_keras.models._signature import network_signature


def _signatures(base, normalization="batch"):
    return {
        placement: network_signature(
            bn_keras.insert_batchnorm(
                base, placement=placement, normalization=normalization
            )
        )
        for placement in ("layer-bn-act", "bn-act-layer", "layer-act-bn")
    }


def _residual():
    """Dense(relu) -> Dense(relu) added to its input -> Dense: the
    pre-activation BN of the second Dense sits on one branch only."""
    inputs = keras.Input((6,))
    h = keras.layers.Dense(8, activation="relu")(inputs)
    r = keras.layers.Dense(8, activation="relu")(h)
    h = keras.layers.Add()([h, r])
    return keras.Model(inputs, keras.layers.Dense(3)(h))


def _trained_predictions(model, x, y):
    """Predictions after two epochs from one seed."""
    model.compile(keras.optimizers.SGD(0.1), "mse")
    keras.utils.set_random_seed(0)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    return model.predict(x, verbose=0)


@pytest.mark.parametrize(
    "kind, quick", [("mlp", False), ("mlp", True), ("cnn", False)]
)
@pytest.mark.parametrize("normalization", ["batch", "renorm", "ghost"])
def test_pre_activation_is_layer_bn_act_on_the_cli_chains(
    kind, quick, normalization
):
    keras.utils.set_random_seed(0)
    base = experiment.build_base_model(kind, datasets.load("digits"), quick)
    signatures = _signatures(base, normalization)
    assert signatures["bn-act-layer"] == signatures["layer-bn-act"]
    assert signatures["layer-act-bn"] != signatures["layer-bn-act"]


def test_pre_activation_differs_with_a_residual_connection():
    keras.utils.set_random_seed(0)
    signatures = _signatures(_residual())
    assert len(set(signatures.values())) == 3


def test_same_signature_trains_to_the_same_model():
    """What the signature claims: the two trained models predict the
    same; the different one does not."""
    keras.utils.set_random_seed(0)
    base = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(2),
        ]
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6)).astype("float32")
    y = rng.normal(size=(32, 2)).astype("float32")
    predictions = {
        placement: _trained_predictions(
            bn_keras.insert_batchnorm(base, placement=placement), x, y
        )
        for placement in ("layer-bn-act", "bn-act-layer", "layer-act-bn")
    }
    np.testing.assert_array_equal(
        predictions["bn-act-layer"], predictions["layer-bn-act"]
    )
    assert (
        np.abs(predictions["layer-act-bn"] - predictions["layer-bn-act"]).max()
        > 1e-3
    )


def _chain(names, units=(8, 2), activation="relu", seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(units[0], activation=activation, name=names[0]),
            keras.layers.Dense(units[1], name=names[1]),
        ],
        name=names[2],
    )


def test_names_aside_everything_counts():
    same = network_signature(_chain(["a", "b", "m"]))
    assert network_signature(_chain(["x", "y", "other"])) == same
    # A configuration, an activation, the weights.
    assert network_signature(_chain(["a", "b", "m"], units=(9, 2))) != same
    assert network_signature(_chain(["a", "b", "m"], activation="tanh")) != same
    assert network_signature(_chain(["a", "b", "m"], seed=1)) != same
    model = _chain(["a", "b", "m"])
    bn = bn_keras.insert_batchnorm(model, placement="layer-bn-act")
    other = bn_keras.insert_batchnorm(
        model, placement="layer-bn-act", normalization={"momentum": 0.9}
    )
    assert network_signature(bn) != network_signature(other)


def _wired(first_name, chained):
    """Two Dense layers concatenated: the second reads the input, or the
    first's output when `chained` (the same layers, the same weights)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,), name=f"{first_name}_in")
    a = keras.layers.Dense(4, name=first_name)(inputs)
    b = keras.layers.Dense(3, name=f"{first_name}_2")(a if chained else inputs)
    joined = keras.layers.Concatenate()([b, a])
    return keras.Model(inputs, joined * 2.0)


def test_wiring_counts_by_position():
    same = network_signature(_wired("p", chained=False))
    assert network_signature(_wired("q", chained=False)) == same
    assert network_signature(_wired("p", chained=True)) != same


def test_canonical_config_names_layers_by_position():
    model = _wired("p", chained=True)
    assert [layer.name for layer in model.layers][:3] == ["p_in", "p", "p_2"]
    config = canonical_config(model.get_config())
    assert "name" not in config
    assert config["input_layers"] == [0, 0, 0]
    assert config["output_layers"] == [4, 0, 0]
    second, concatenate = config["layers"][2:4]
    assert concatenate["class_name"] == "Concatenate"
    assert "name" not in concatenate and "name" not in concatenate["config"]
    (node,) = concatenate["inbound_nodes"]
    refs = [t["config"]["keras_history"] for t in node["args"][0]]
    assert refs == [[2, 0, 0], [1, 0, 0]]  # b, then a
    (node,) = second["inbound_nodes"]
    assert node["args"][0]["config"]["keras_history"] == [1, 0, 0]


def test_nested_models_by_position():
    def outer(inner_name, seed=0):
        inner = _chain([f"{inner_name}1", f"{inner_name}2", inner_name])
        keras.utils.set_random_seed(seed)
        inputs = keras.Input((4,))
        return keras.Model(inputs, keras.layers.Dense(1)(inner(inputs)))

    assert network_signature(outer("u")) == network_signature(outer("v"))
    assert network_signature(outer("u")) != network_signature(outer("u", 1))
