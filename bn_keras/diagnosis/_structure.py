"""Structural findings, read from where each batch normalization layer
sits in the model's graph (`bn_keras.models._placement`)."""

import keras

from bn_keras.diagnosis import _detectors
from bn_keras.layers._layer_kinds import ACTIVATION_LAYERS
from bn_keras.layers._layer_kinds import DENSE_CONV_LAYERS
from bn_keras.layers._layer_kinds import is_linear
from bn_keras.models._graph import GraphError
from bn_keras.models._graph import LayerGraph
from bn_keras.models._graph import model_kind

#: Layers that drop or perturb inputs in training only.
DROPOUT_LAYERS = (
    keras.layers.Dropout,
    keras.layers.GaussianDropout,
    keras.layers.AlphaDropout,
)


def _output_names(model):
    try:
        return set(LayerGraph(model, model_kind(model, "diagnose")).outputs)
    except GraphError:
        return set()


def _is_dropout(layer):
    return isinstance(layer, DROPOUT_LAYERS) and getattr(layer, "rate", 0) > 0


def _has_bias(layer):
    return (
        isinstance(layer, DENSE_CONV_LAYERS)
        and getattr(layer, "use_bias", False)
        and is_linear(layer)
    )


def _before_output(after, outputs):
    """Whether a BN layer followed by `after` computes a model output,
    directly or through one activation layer."""
    if after is None:
        return True
    return isinstance(after, ACTIVATION_LAYERS) and after.name in outputs


def structure_findings(model, entries):
    """The findings of `dropout-before-batchnorm`, `bias-before-batchnorm`
    and `batchnorm-before-output` (`None` where there is none), from the
    `(path, layer, before, after)` of `batchnorm_neighbours(model)`.

    A BN layer inside a subclassed model has no known neighbours (`None`
    both) and is left out.
    """
    outputs = _output_names(model)
    known = [
        entry
        for entry in entries
        if entry[2] is not None or entry[3] is not None
    ]
    dropout = [
        (before.name, path)
        for path, _, before, _ in known
        if isinstance(before, keras.layers.Layer) and _is_dropout(before)
    ]
    bias = [
        (before.name, path)
        for path, _, before, _ in known
        if isinstance(before, keras.layers.Layer) and _has_bias(before)
    ]
    last = [
        path for path, _, _, after in known if _before_output(after, outputs)
    ]
    return [
        _detectors.dropout_before_batchnorm(dropout),
        _detectors.bias_before_batchnorm(bias),
        _detectors.batchnorm_before_output(last),
    ]
