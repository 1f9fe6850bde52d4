"""How many batch normalization layers lie on the paths before each one.

Shared by `bn_keras.recalibrate` (a layer whose inputs depend on no other
batch normalization layer has exact statistics after one pass, whatever
the others do) and `bn_keras.diagnose` (those first layers see the model's
input most directly: the scale of the input shows in them). Read from the
graphs of Sequential and Functional models, nested ones, `BNBlock`s and
wrappers included; the layers inside a subclassed model or layer have no
readable graph, and neither have the layers after it.
"""

import keras

from bn_keras.layers.bn_block import BNBlock
from bn_keras.models._graph import GraphError
from bn_keras.models._graph import LayerGraph
from bn_keras.models._graph import model_kind
from bn_keras.models.find_batchnorm import find_batchnorm


def batchnorm_depths(model):
    """`{id(layer): depth}` for every batch normalization layer of `model`.

    A layer's depth is 1 when no batch normalization layer lies on any path
    from the model's inputs to it, and otherwise one more than the largest
    depth among those that do; `None` where the graph cannot be read (a
    subclassed model or layer, and everything after it). A layer called
    several times gets the largest depth of its calls.

    >>> model = keras.Sequential([
    ...     keras.Input((4,)),
    ...     keras.layers.BatchNormalization(name="a"),
    ...     keras.layers.Dense(3),
    ...     keras.layers.BatchNormalization(name="b"),
    ... ])
    >>> depths = bn_keras.models._depth.batchnorm_depths(model)
    >>> [depths[id(layer)] for layer in bn_keras.find_batchnorm(model)]
    [1, 2]
    """
    depths = {}
    _visit(model, 0, depths)
    return depths


def _record(depths, layer, depth):
    """Keeps the largest depth of a layer's calls; `None` wins."""
    known = depths.get(id(layer), depth)
    if depth is None or known is None:
        depths[id(layer)] = None
    else:
        depths[id(layer)] = max(depth, known)


def _visit(layer, depth, depths):
    """Records the depths of the batch normalization layers of `layer`
    entered at `depth`; returns the depth of its output."""
    if isinstance(layer, keras.layers.BatchNormalization):
        depth = None if depth is None else depth + 1
        _record(depths, layer, depth)
        return depth
    if isinstance(layer, keras.layers.Wrapper):
        return _visit(layer.layer, depth, depths)
    inner = find_batchnorm(layer) if hasattr(layer, "layers") else []
    if not inner:
        return depth
    try:
        graph = LayerGraph(layer, model_kind(layer, "batchnorm_depths"))
    except GraphError:
        graph = None
    if graph is not None:
        return _visit_graph(graph, depth, depths)
    if isinstance(layer, BNBlock):  # its steps, in sequence
        for step in layer.layers:
            depth = _visit(step, depth, depths)
        return depth
    return _unknown(inner, depths)


def _unknown(layers, depths):
    for layer in layers:
        _record(depths, layer, None)
    return None


def _visit_graph(graph, depth, depths):
    done = {}

    def output_depth(name):
        if name not in done:
            inputs = [output_depth(p) for p in graph.producers[name]]
            inputs.append(depth)
            entry = None if None in inputs else max(inputs)
            done[name] = _visit(graph.by_name[name], entry, depths)
        return done[name]

    for name in graph.by_name:
        output_depth(name)
    outputs = [done[name] for name in graph.outputs] or [depth]
    return None if None in outputs else max(outputs)
