"""Where each batch normalization layer of a model sits, in words.

Shared by `bn-keras inspect` (its `kind` and `neighbours` columns) and
`bn_keras.callbacks.BatchNormMonitor` (the text summary of a run): the
layers before and after each BN layer, in forward order, whether it sits
before or after an activation, and what kind of BN it is. Read from the
model's graph of layers (`LayerGraph`), so it needs a Sequential or
Functional model; the BN layers of a subclassed model are listed without
neighbours.
"""

import keras

from bn_keras.layers._layer_kinds import ACTIVATION_LAYERS
from bn_keras.layers._layer_kinds import is_linear
from bn_keras.layers.bn_block import BNBlock
from bn_keras.models._graph import GraphError
from bn_keras.models._graph import LayerGraph
from bn_keras.models._graph import is_raw_op
from bn_keras.models._graph import model_kind
from bn_keras.models.find_batchnorm import find_batchnorm

#: The neighbour of a layer that has several inputs or outputs.
SEVERAL = "several"


def kind_of(layer):
    """'plain', 'ghost(N)', 'renorm' or 'ghost(N)+renorm'.

    >>> bn_keras.models._placement.kind_of(
    ...     bn_keras.layers.BatchNormalization(virtual_batch_size=8))
    'ghost(8)'
    """
    parts = []
    size = getattr(layer, "virtual_batch_size", None)
    if size:
        parts.append(f"ghost({size})")
    if getattr(layer, "renorm", False):
        parts.append("renorm")
    return "+".join(parts) or "plain"


def _is_activation(layer):
    if layer is None:
        return False
    return isinstance(layer, ACTIVATION_LAYERS) or not is_linear(layer)


def describe(layer):
    """A short label of a neighbour: the class, or the activation's name;
    `"input"` for `None` (the model's input), a string as it is."""
    if layer is None:
        return "input"
    if isinstance(layer, str):
        return layer
    if is_raw_op(layer):  # `h * 2.0`, `keras.ops.relu(h)`
        return f"{type(layer).__name__} (op)"
    if isinstance(layer, keras.layers.Activation):
        return keras.activations.serialize(layer.activation)
    if isinstance(layer, ACTIVATION_LAYERS):
        return type(layer).__name__
    label = type(layer).__name__
    if not is_linear(layer):
        label += f"({keras.activations.serialize(layer.activation)})"
    return label


def position(before, after):
    """Where the BN sits relative to the activation, if next to one:
    `"before act"`, `"after act"` or `""`.

    After a layer with a built-in activation (`Dense(relu)`) counts as after
    the activation; before such a layer does not (its activation comes
    after its kernel).
    """
    if isinstance(after, ACTIVATION_LAYERS):
        return "before act"
    if _is_activation(before):
        return "after act"
    return ""


def _neighbour(graph, names, outside):
    """The one layer in `names`, `SEVERAL`, or `outside` if none."""
    if not names:
        return outside
    if len(set(names)) > 1:
        return SEVERAL
    return graph.by_name[names[0]]


def _walk(model, prefix, outer_before, outer_after, found):
    """Records `(path, bn, before, after)` for every BN in forward order."""
    try:
        graph = LayerGraph(model, model_kind(model, "inspect"))
    except GraphError:
        return  # subclassed: find_batchnorm still lists its BN layers
    for layer in graph.layers:
        producers = graph.producers[layer.name]
        consumers = graph.consumers[layer.name]
        before = _neighbour(graph, producers, outer_before)
        after = _neighbour(graph, consumers, outer_after)
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append((prefix + layer.name, layer, before, after))
        elif isinstance(layer, keras.Model):
            _walk(layer, f"{prefix}{layer.name}/", before, after, found)
        elif isinstance(layer, BNBlock) and layer.normalization is not None:
            steps = layer.layers
            i = steps.index(layer.normalization)
            found.append(
                (
                    f"{prefix}{layer.name}/{layer.normalization.name}",
                    layer.normalization,
                    steps[i - 1] if i > 0 else before,
                    steps[i + 1] if i + 1 < len(steps) else after,
                )
            )


def batchnorm_neighbours(model):
    """`(path, bn, before, after)` for every BN layer of `model`.

    In forward order through the graphs of Sequential and Functional models
    (nested ones and `BNBlock`s included). `path` is the layer's name,
    preceded by those of the models and blocks around it (`"block/bn"`);
    `before` and `after` are the neighbouring layers, `None` for the
    model's input or output, or `SEVERAL`. BN layers the graphs do not
    reach (inside a subclassed model) come last, with `None` neighbours.
    """
    found = []
    _walk(model, "", None, None, found)
    walked = {id(entry[1]) for entry in found}
    for layer in find_batchnorm(model):  # e.g. inside a subclassed model
        if id(layer) not in walked:
            path = getattr(layer, "path", layer.name)
            found.append((path, layer, None, None))
    return found
