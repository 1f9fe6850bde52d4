"""The TensorBoard tag prefix of each batch normalization layer of a model.

The rule, which `BatchNormMonitor` documents: a BN layer is named after
what it normalizes, its *source*: the first layer met walking back from
the BN's input through layers that neither hold weights nor merge several
inputs (activations, pooling, `Flatten`, `Dropout`, other BN layers, raw
tensor operations), into and out of nested models and `BNBlock`s. A
source is a layer with weights (Dense, convolution, ...) or a merge
(`Add`, `Concatenate`), or the model's input. The tag is `bn<NN>-<name>`:

- `NN` is the source's position among the model's sources in forward
  order, from 1 (zero-padded to at least two digits), `00` for the input;
- `<name>` is `input`, or the names the user gave the source and the
  models and blocks around it, outermost first, joined by dots, with the
  source's class in snake case when its own name is automatic
  (`bn03-block_1.dense`, `bn02-hidden`, `bn01-conv2d`); a name derived
  from its block's (`block_1_dense` in `block_1`) counts as automatic.

A second BN of the same source gets a letter after the number (`bn02b`).
Names Keras gives automatically (the snake case name of a class,
optionally with `_N`: `conv2d_4`, `sequential_2`) and names derived from
them by `insert_batchnorm` and `BNBlock` (`dense_3_bn`) count layers built
so far in the process and are never used. So the tags depend only on the
architecture and the names the user chose: deterministic across
processes, and the same for the BN that normalizes the same layer in
every model `insert_batchnorm` or the hypermodels build from one
architecture, whatever the placement (`layer-bn-act`'s BN after the
second convolution and `bn-act-layer`'s before the third are both
`bn02-conv2d`). BN layers whose graph cannot be read (inside a subclassed
model) are numbered in forward order among themselves: `bnx01`.
"""

import re
import string

import keras

from bn_keras.layers.bn_block import BNBlock
from bn_keras.models._graph import GraphError
from bn_keras.models._graph import LayerGraph
from bn_keras.models._graph import model_kind
from bn_keras.models.find_batchnorm import batchnorm_parents

#: Suffixes that `insert_batchnorm` and `BNBlock` append to the name of the
#: layer (or input) a new layer serves.
DERIVED_SUFFIXES = ("bn", "act", "activation")

#: Automatic names of what has no layer object in the model's tree.
_OTHER_AUTOMATIC = ("input_layer", "functional", "sequential")

#: The source of a BN layer fed by the model's input.
INPUT = "input"


def to_snake_case(name):
    """Keras's snake case of a class name: `"BatchNormalization"` ->
    `"batch_normalization"` (`keras.src.utils.naming.to_snake_case`).

    >>> bn_keras.callbacks._tags.to_snake_case("BNBlock")
    'bn_block'
    """
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _class_names(layer):
    """Snake case names of the layer's class and its Keras base classes."""
    return {
        to_snake_case(cls.__name__)
        for cls in type(layer).__mro__
        if issubclass(cls, keras.Operation)
    }


def automatic_name_pattern(bases):
    """A regex matching the automatic names made of `bases` (snake case
    class names): a base, an optional `_N`, then any number of derived
    suffixes, each with an optional `_N`.

    >>> pattern = bn_keras.callbacks._tags.automatic_name_pattern(["dense"])
    >>> [bool(pattern.match(n)) for n in ("dense_3_bn", "hidden_bn")]
    [True, False]
    """
    alternatives = "|".join(sorted(map(re.escape, bases), key=len)[::-1])
    suffixes = "|".join(DERIVED_SUFFIXES)
    return re.compile(
        rf"^(?:{alternatives})(?:_\d+)?(?:_(?:{suffixes})(?:_\d+)?)*$"
    )


def _all_layers(model):
    """`model` and every layer nested in it."""
    found, stack = [], [model]
    while stack:
        layer = stack.pop()
        found.append(layer)
        stack.extend(getattr(layer, "layers", None) or [])
        if isinstance(layer, keras.layers.Wrapper):
            stack.append(layer.layer)
    return found


def _has_weights(node):
    return bool(getattr(node, "weights", None))


class _Sources:
    """Walks a model's graphs in forward order: the source of every BN
    layer reached, and the sources in the order they are met."""

    def __init__(self, automatic):
        self.automatic = automatic
        self.sources = []  # (layer, names), in forward order
        self.of_bn = []  # (bn layer, index into sources or None for input)

    def _user_names(self, names):
        return [name for name in names if not self.automatic.match(name)]

    def _new_source(self, layer, containers):
        names = self._user_names(containers)
        # A name derived from its block's (`block_0_dense`) says no more.
        derived = bool(containers) and layer.name.startswith(
            f"{containers[-1]}_"
        )
        if self.automatic.match(layer.name) or derived:
            names.append(to_snake_case(type(layer).__name__))
        else:
            names.append(layer.name)
        self.sources.append((layer, names))
        return len(self.sources) - 1

    def walk(self, model, containers, source):
        """Walks `model` fed by `source`; returns its output's source."""
        graph = LayerGraph(model, model_kind(model, "BatchNormMonitor"))
        # Forward order: a Functional model's operations are sorted by
        # depth, raw tensor operations among its layers.
        nodes = getattr(model, "operations", None) or graph.layers
        out = {}
        for layer in [n for n in nodes if n.name in graph.by_name]:
            producers = graph.producers[layer.name]
            if len(producers) > 1:
                out[layer.name] = self._new_source(layer, containers)
                continue
            into = out.get(producers[0]) if producers else source
            out[layer.name] = self._step(layer, containers, into)
        ends = {out.get(name) for name in graph.outputs}
        if len(ends) == 1:
            return ends.pop()
        return self._new_source(model, containers[:-1])  # several outputs

    def _step(self, layer, containers, into):
        if isinstance(layer, keras.layers.BatchNormalization):
            self.of_bn.append((layer, into))
            return into
        if isinstance(layer, keras.Model):
            return self.walk(layer, [*containers, layer.name], into)
        if isinstance(layer, BNBlock):
            for step in layer.layers:
                into = self._step(step, [*containers, layer.name], into)
            return into
        if _has_weights(layer):
            return self._new_source(layer, containers)
        return into


def _letter(count):
    """`""` for the first BN layer of a source, then `"b"`, `"c"`, ..."""
    if count == 0:
        return ""
    return string.ascii_lowercase[count] if count < 26 else f"_{count + 1}"


def batchnorm_tags(model):
    """`[(layer, tag prefix)]` for every BN layer of `model`, in forward
    order, by the rule of this module.

    >>> model = keras.Sequential([
    ...     keras.Input((4,)),
    ...     keras.layers.BatchNormalization(),
    ...     keras.layers.Dense(8, name="hidden"),
    ...     keras.layers.BatchNormalization(),
    ...     keras.layers.Dense(8),
    ...     keras.layers.ReLU(),
    ...     keras.layers.BatchNormalization(name="last_bn"),
    ... ])
    >>> [tag for _, tag in bn_keras.callbacks._tags.batchnorm_tags(model)]
    ['bn00-input', 'bn01-hidden', 'bn02-dense']
    """
    found = batchnorm_parents(model)
    bases = set(_OTHER_AUTOMATIC)
    for layer in _all_layers(model):
        bases |= _class_names(layer)
    walker = _Sources(automatic_name_pattern(bases))
    try:
        walker.walk(model, [], None)
    except (GraphError, NotImplementedError):
        # A subclassed model, or one whose config Keras cannot make:
        # numbered below.
        walker.of_bn = []
    width = max(2, len(str(len(walker.sources))))
    tags, shared = {}, {}
    for layer, source in walker.of_bn:
        if id(layer) in tags:
            continue  # a shared layer, called twice
        number = 0 if source is None else source + 1
        count = shared.get(number, 0)
        shared[number] = count + 1
        name = INPUT if source is None else ".".join(walker.sources[source][1])
        tags[id(layer)] = f"bn{number:0{width}d}{_letter(count)}-{name}"
    unreached = [layer for layer, _ in found if id(layer) not in tags]
    for index, layer in enumerate(unreached, start=1):
        tags[id(layer)] = f"bnx{index:02d}"
    return [(layer, tags[id(layer)]) for layer, _ in found]
