"""Tests of `plan_fold`: what `fold_batchnorm` will do, without doing it."""

import keras
import pytest

import bn_keras
from bn_keras.models._fold_plan import plan_fold
from bn_keras.models._graph import GraphError


def _mixed_model():
    """Foldable and kept BN layers: direct, in BNBlocks, in a sub-model."""
    inputs = keras.Input((8, 8, 3), name="image")
    a = keras.layers.Conv2D(4, 3, padding="same", name="c1")(inputs)
    a = keras.layers.BatchNormalization(name="bn1")(a)  # folded
    b = keras.layers.Conv2D(4, 3, activation="relu", name="c2")(a)
    b = bn_keras.layers.BatchNormalization(name="bn2")(b)  # after relu
    c = keras.layers.Conv2D(4, 1, name="c3")(b)
    d = keras.layers.BatchNormalization(name="bn3")(c)  # c3 feeds add too
    e = keras.layers.Add(name="add")([c, d])
    f = keras.layers.GlobalAveragePooling2D(name="gap")(e)
    g = bn_keras.layers.BNBlock(
        keras.layers.Dense(6), activation="relu", name="block1"
    )(f)  # folded into one Dense
    h = bn_keras.layers.BNBlock(
        keras.layers.Dense(6), placement="layer-act-bn", name="block2"
    )(g)  # kept: BN comes after the activation
    inner = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(5, use_bias=False, name="d"),
            keras.layers.BatchNormalization(name="bn"),  # folded
            keras.layers.ReLU(name="relu"),
            bn_keras.layers.GhostBatchNormalization(name="ghost"),  # kept
        ],
        name="inner",
    )
    outputs = keras.layers.Dense(2, name="logits")(inner(h))
    return keras.Model(inputs, outputs, name="mixed")


def test_plan_reports_what_fold_batchnorm_does():
    model = _mixed_model()
    plan = plan_fold(model)
    block1 = model.get_layer("block1")
    assert {e["batchnorm"]: e["layer"] for e in plan.folded} == {
        "bn1": "c1",
        f"block1/{block1.normalization.name}": f"block1/{block1.layer.name}",
        "inner/bn": "inner/d",
    }
    block2 = model.get_layer("block2")
    assert {e["batchnorm"]: e["reason"] for e in plan.kept} == {
        "bn2": "'c2' has a non-linear activation before it",
        "bn3": "the output of 'c3' is used elsewhere too",
        f"block2/{block2.normalization.name}": (
            "placement 'layer-act-bn' does not put BN directly after the "
            "layer"
        ),
        "inner/ghost": "it follows 'relu' (ReLU)",
    }
    folded, report = bn_keras.fold_batchnorm(model, return_report=True)
    assert report == {"folded": plan.folded, "kept": plan.kept}
    # The folded model keeps exactly the BN layers that the plan keeps.
    assert sorted(bn.name for bn in bn_keras.find_batchnorm(folded)) == sorted(
        entry["batchnorm"].split("/")[-1] for entry in plan.kept
    )


def test_plan_per_model():
    plan = plan_fold(_mixed_model())
    assert plan.kind == "functional"
    assert sorted(plan.into) == ["c1"]
    assert plan.into["c1"].name == "bn1"
    assert plan.removed == {"bn1"}
    assert plan.blocks == {"block1"}
    inner = plan.nested["inner"]
    assert inner.kind == "sequential"
    assert inner.removed == {"bn"} and list(inner.into) == ["d"]
    assert inner.folded == [{"layer": "inner/d", "batchnorm": "inner/bn"}]


def test_plan_builds_nothing():
    """A layer that cannot be copied stops `fold_batchnorm` (it rebuilds
    the model), not the plan, which only reads the graph."""

    class Scale(keras.layers.Layer):
        def __init__(self, factor, **kwargs):
            super().__init__(**kwargs)
            self.factor = factor

        def call(self, x):
            return x * self.factor

        def get_config(self):  # forgets `factor`
            return {"name": self.name}

    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(4, name="dense"),
            keras.layers.BatchNormalization(name="bn"),
            Scale(2.0, name="scale"),
        ]
    )
    plan = plan_fold(model)
    assert plan.folded == [{"layer": "dense", "batchnorm": "bn"}]
    with pytest.raises(TypeError, match="Cannot copy layer 'scale'"):
        bn_keras.fold_batchnorm(model)


def test_plan_of_a_subclassed_model_says_why_in_one_sentence():
    class Net(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(GraphError) as info:
        plan_fold(Net(name="net"))
    reason = (
        "`fold_batchnorm` rewrites a model's graph of layers, and a "
        "subclassed model has none to rewrite: its forward pass is the "
        "Python code of its `call()` method, which bn_keras cannot read or "
        "change"
    )
    assert info.value.reason == reason
    assert isinstance(info.value, TypeError)
    assert str(info.value).startswith(reason + ". Add the layers in")
    assert str(info.value).endswith(
        "Received: model=<subclassed model Net name=net>"
    )
