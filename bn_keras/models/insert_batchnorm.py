"""Add batch normalization to an existing Sequential or Functional model."""

from __future__ import annotations

import logging

import keras

from bn_keras import registry
from bn_keras._statistics import weight_values
from bn_keras._typing import InputNormalization
from bn_keras._typing import LayerSelection
from bn_keras._typing import Normalization
from bn_keras.layers._layer_kinds import ACTIVATION_LAYERS
from bn_keras.layers._layer_kinds import DENSE_CONV_LAYERS
from bn_keras.layers._layer_kinds import channel_axis
from bn_keras.layers._layer_kinds import is_linear
from bn_keras.models._graph import Replacement
from bn_keras.models._graph import all_layer_names
from bn_keras.models._graph import all_layers
from bn_keras.models._graph import check_layer_names
from bn_keras.models._graph import copied
from bn_keras.models._graph import copy_layer
from bn_keras.models._graph import input_layers
from bn_keras.models._graph import input_names
from bn_keras.models._graph import is_raw_op
from bn_keras.models._graph import model_kind
from bn_keras.models._graph import output_layers
from bn_keras.models._graph import rewrite
from bn_keras.models._graph import unique_name

logger = logging.getLogger("bn_keras")

# -- insert_batchnorm ---------------------------------------------------------


def _select(model, layers):
    """Returns a predicate `layer -> bool` for the `layers` argument."""
    every = all_layers(model)
    dense_conv = [x.name for x in every if isinstance(x, DENSE_CONV_LAYERS)]
    names = check_layer_names(
        layers,
        known={layer.name for layer in every},
        listed=dense_conv,
        label="Dense and convolution layers",
        allow_callable=True,
    )
    if names is None or callable(names):
        return names
    return lambda layer: layer.name in names


def _input_layer_factory(input_batchnorm, normalization):
    """`make(**defaults)` -> the layer `input_batchnorm` puts on each float
    input (without `gamma` and `beta` unless a dict or layer sets them), or
    `None` for no input normalization."""
    if input_batchnorm is None or input_batchnorm is False:
        return None
    if input_batchnorm is True:  # the layers' normalization
        input_batchnorm = normalization
    elif isinstance(input_batchnorm, str):
        name = registry.get_input_normalization_name(input_batchnorm)
        if registry.INPUT_NORMALIZATIONS[name] is None:
            return None
        return lambda **defaults: registry.get_input_normalization(
            name, **defaults
        )
    elif not isinstance(input_batchnorm, (dict, keras.layers.Layer)):
        raise TypeError(
            "Argument `input_batchnorm` must be a boolean, None, one of "
            f"{registry.input_normalization_names()}, a dict of "
            "BatchNormalization arguments or a layer. "
            f"Received: input_batchnorm={input_batchnorm!r}"
        )
    registry.get_normalization(input_batchnorm)  # a bad value fails here
    return lambda **defaults: registry.get_normalization(
        input_batchnorm, center=False, scale=False, **defaults
    )


#: The placement that puts BN after a stand-alone activation layer.
_LAYER_ACT_BN = ("layer", "act", "bn")
#: The pre-activation placement, which moves activations.
_BN_ACT_LAYER = ("bn", "act", "layer")


def _passes_through(graph, layer):
    """Whether the pre-activation search walks up through `layer`: a layer
    without weights and with one input (`Flatten`, pooling, `Dropout`),
    called once, whose output feeds one node and no model output."""
    name = layer.name
    return (
        not isinstance(layer, (keras.Model, *ACTIVATION_LAYERS))
        and not is_raw_op(layer)
        and not layer.weights
        and graph.calls[name] == 1
        and len(graph.producers[name]) == 1
        and len(graph.consumers[name]) == 1
        and name not in graph.outputs
    )


def activation_before(graph, name):
    """The activation that the input of layer `name` went through last.

    Walks up from the layer through layers that pass through (see
    `_passes_through`) to the first one that is an activation: a Dense or
    convolution layer with an activation of its own, or a stand-alone
    activation layer, called once.

    Returns:
        `(source, edge)`: the name of that layer, and the name of the node
        on the path that consumes its output (the layer itself, or the
        first layer passed through); `None` when the walk reaches anything
        else first (a model input, a linear layer, a merge such as a
        residual add, a layer called several times).
    """
    node = name
    while graph.calls[node] == 1 and len(graph.producers[node]) == 1:
        (source,) = graph.producers[node]
        layer = graph.by_name[source]
        if graph.calls[source] != 1 or is_raw_op(layer):
            return None
        if isinstance(layer, ACTIVATION_LAYERS):
            return source, node
        if isinstance(layer, DENSE_CONV_LAYERS):
            return None if is_linear(layer) else (source, node)
        if not _passes_through(graph, layer):
            return None
        node = source
    return None


class _Insertion:
    """What `insert_batchnorm` adds, applied to a model and its sub-models.

    `order` is the placement's order of steps, `make_bn(axis, name)` makes
    a BN layer, `select` is the predicate of the `layers` argument (None
    for every Dense and convolution layer), and `edges` holds the ids of
    the layers that by default get no BN: after the model's
    `output_layers` (it would normalize the logits or the target), or,
    for `"bn-act-layer"`, before its `input_layers`.
    """

    def __init__(self, order, make_bn, select, edges):
        self.order = order
        self.make_bn = make_bn
        self.select = select
        self.edges = edges

    def selected(self, layer):
        """Whether `layer` gets a BN of its own."""
        if isinstance(layer, keras.Model) or "bn" not in self.order:
            return False
        if self.select is not None:
            return bool(self.select(layer))
        return isinstance(layer, DENSE_CONV_LAYERS) and (
            id(layer) not in self.edges
        )

    def make_replace(self, model, graph, path):
        """`replace(layer)` for one model of the rewrite (see `rewrite`)."""
        taken = all_layer_names(model)
        if model.built:
            taken |= set(input_names(model, graph.kind))

        def bn_for(layer, axis=None):
            name = unique_name(f"{layer.name}_bn", taken)
            axis = channel_axis(layer) if axis is None else axis
            return self.make_bn(axis, name)

        if self.order == _BN_ACT_LAYER:
            return self._pre_activation(graph, bn_for, taken)
        bn_after = self._bn_after_activation(graph)
        moved = {b.name for b in bn_after.values()}

        def replace(layer):
            if isinstance(layer, keras.Model):
                return None  # rewritten the same way
            if layer.name in bn_after:
                normalized = bn_after[layer.name]
                return copied(layer, lambda: ((), (bn_for(normalized),)))
            if layer.name in moved or not self.selected(layer):
                return copied(layer)
            return self._with_bn(layer, bn_for, taken)

        return replace

    def _bn_after_activation(self, graph):
        """With "layer-act-bn", a linear layer followed only by a stand-alone
        activation layer gets its BN after that activation layer.

        Returns:
            A dict from the activation layer's name to the layer that the
            BN after it normalizes for.
        """
        bn_after = {}
        if self.order != _LAYER_ACT_BN:
            return bn_after
        for layer in graph.layers:
            consumers = graph.consumers[layer.name]
            if (
                self.selected(layer)
                and is_linear(layer)
                and len(consumers) == 1
                and isinstance(graph.by_name[consumers[0]], ACTIVATION_LAYERS)
                and graph.single_path(layer.name, consumers[0])
            ):
                bn_after[consumers[0]] = layer
        return bn_after

    def _with_bn(self, layer, bn_for, taken):
        """The replacement of a selected layer: BN after it ("layer-bn-act"
        or "layer-act-bn")."""
        if self.order == _LAYER_ACT_BN or is_linear(layer):
            return copied(layer, lambda: ((), (bn_for(layer),)))
        # "layer-bn-act": split the layer's own activation out.
        activation = layer.get_config()["activation"]

        def extra():
            act = keras.layers.Activation(
                activation, name=unique_name(f"{layer.name}_act", taken)
            )
            return (), (bn_for(layer), act)

        return Replacement(
            copy_layer(layer, activation="linear"), weight_values(layer), extra
        )

    def _pre_activation(self, graph, bn_for, taken):
        """`replace` for "bn-act-layer": BN, then the activation, before each
        selected layer.

        The activation its input went through last (`activation_before`)
        moves from the layer that applied it to the edge towards the
        selected layer, with the BN before it; the other consumers of that
        layer, and a model output, get the activation alone, as before. A
        selected layer whose input went through no activation gets BN on
        its input.
        """
        targets, direct = {}, set()
        for layer in graph.layers:
            if not self.selected(layer):
                continue
            found = activation_before(graph, layer.name)
            if found is None:
                direct.add(layer.name)
            else:
                targets.setdefault(found[0], {})[found[1]] = layer

        def replace(layer):
            if isinstance(layer, keras.Model):
                return None  # rewritten the same way
            own = layer.name in direct
            if layer.name in targets:
                moved = targets[layer.name]
                return self._moved(graph, layer, moved, own, bn_for, taken)
            if own:
                return copied(layer, lambda: ((bn_for(layer),), ()))
            return copied(layer)

        return replace

    def _moved(self, graph, layer, targets, own_bn, bn_for, taken):
        """The replacement of a layer whose activation moves.

        `targets` maps the consumer on each path to the selected layer
        there, which gets `(BN, activation)` on that path; the other
        consumers and a model output get the activation alone. A
        stand-alone activation layer stays as it is (BN goes before it,
        its copy is shared by every path); a Dense or convolution layer
        becomes linear, and each path gets an `Activation` layer of its
        activation, named after the layer it now precedes. `own_bn`: the
        layer also gets BN on its own input.
        """
        name = layer.name
        keeps = name in graph.outputs or bool(
            set(graph.consumers[name]) - set(targets)
        )
        if isinstance(layer, ACTIVATION_LAYERS):
            shared = copy_layer(layer)
            step = Replacement(None, copies=[(shared, weight_values(layer))])
            axis = _axis_before(graph, name)

            def activation(base):
                return shared

        else:
            main = copy_layer(layer, activation="linear")
            step = Replacement(main, weight_values(layer))
            axis = channel_axis(layer)
            config = layer.get_config()["activation"]

            def activation(base):
                return keras.layers.Activation(
                    config, name=unique_name(base, taken)
                )

        def extra():
            routes = {
                edge: (bn_for(target, axis), activation(f"{target.name}_act"))
                for edge, target in targets.items()
            }
            after = (activation(f"{name}_act"),) if keeps else None
            return ((bn_for(layer),) if own_bn else ()), after, routes

        step.make_extra = extra
        return step


def _axis_before(graph, name):
    """The features axis of a stand-alone activation layer's input: that of
    the nearest Dense or convolution layer before it, else -1."""
    node = name
    while len(graph.producers[node]) >= 1:
        node = graph.producers[node][0]
        layer = graph.by_name[node]
        if isinstance(layer, DENSE_CONV_LAYERS):
            return channel_axis(layer)
    return -1


def insert_batchnorm(
    model: keras.Model,
    placement: str | None = "layer-bn-act",
    normalization: Normalization = None,
    layers: LayerSelection = None,
    input_batchnorm: InputNormalization = False,
) -> keras.Model:
    """Returns a copy of `model` with batch normalization added.

    Every Dense and convolution layer (`Dense`, `Conv1D`/`2D`/`3D`, their
    `Transpose` forms, `SeparableConv` and `DepthwiseConv`), or the layers
    chosen with `layers`, gets a new BN layer at `placement`. On a model
    built as `Dense(relu) -> Dense(relu) -> Dense` (`h1`, `h2`, `out`),
    each name builds:

    | placement (aliases)           | the layers of the new model        |
    | ----------------------------- | ---------------------------------- |
    | `"layer-bn-act"`              | `h1 h1_bn h1_act h2 h2_bn h2_act`  |
    | (`"before_activation"`)       | `out`                              |
    | `"layer-act-bn"`              | `h1(relu) h1_bn h2(relu) h2_bn out`|
    | (`"after_activation"`)        |                                    |
    | `"bn-act-layer"`              | `h1 h2_bn h2_act h2 out_bn out_act`|
    | (`"pre_activation"`)          | `out`                              |
    | `"layer-act"` (`"none"`,      | `h1(relu) h2(relu) out`            |
    | `None`)                       |                                    |

    - `"layer-bn-act"`: layer, BN, activation. An activation set inside the
      layer (`Dense(64, activation="relu")`) is split out into an
      `Activation` layer (`"h1_act"`) so that BN can go between.
    - `"layer-act-bn"`: BN after the layer's activation, whether it is set
      inside the layer or is a stand-alone activation layer (`Activation`,
      `ReLU`, ...) that directly follows it.
    - `"bn-act-layer"`: pre-activation, as in pre-activation ResNets (He et
      al., 2016): BN, activation, layer. The activation before the layer
      is moved out of the layer that applied it, to the path towards this
      one, after its BN (`"h2_bn"`, `"h2_act"`: BN and activation before
      `h2`); before a stand-alone activation layer, BN goes on its input.
      The activation is found walking up from the layer through layers
      without weights (`Flatten`, pooling, `Dropout`), which keep their
      place after it. Between two Dense or convolution layers in a chain
      this is the order of `"layer-bn-act"`; the two differ where an
      output feeds several layers (below), at the edges and in which layer
      a BN is named after.
    - `"layer-act"`: no BN in the layers (use it with `input_batchnorm` to
      normalize the inputs only).

    At the edges, with `layers=None`:

    - the first Dense or convolution layer of each path from an input
      gets no BN before it (`"bn-act-layer"`): a model input has no
      activation to move, and standardizing it is `input_batchnorm`'s
      business;
    - the last Dense or convolution layer of each path to an output (the
      one that computes logits or the regression target) gets no BN after
      it (`"layer-bn-act"`, `"layer-act-bn"`); `"bn-act-layer"` puts BN
      and the activation before it, as pre-activation ResNets do before
      their classifier.

    Name a layer in `layers` to give it BN at an edge (with
    `"bn-act-layer"`, BN on its input). A layer whose output feeds several
    others (a residual add and the next layer) with `"bn-act-layer"`: its
    activation moves to the path of each selected layer, with a BN of that
    layer's; the other consumers (the add) and a model output get the
    activation alone, as before. A layer whose input comes from a merge
    (an add), from a layer called several times, from a linear layer or
    from outside its nested model has no activation to move: it gets BN on
    its input. A stand-alone activation layer with weights (`PReLU`) is
    shared by every path it is moved to. New layers are named after the
    layer they serve (`"dense_bn"`, `"dense_act"`).

    Every other layer is copied with its weights: before training, the new
    model computes the same function as the old one in inference, up to
    the new BN layers (which start as the identity, with zero mean and unit
    variance). The original model is left unchanged. Sub-models (a
    Sequential or Functional model used as a layer) are rewritten the same
    way. A compiled model's copy is compiled with the same configuration.

    Args:
        model: A Sequential or Functional `keras.Model`. Subclassed models
            cannot be rewritten (their forward pass is Python code) and
            raise a `TypeError`.
        placement: Where BN goes; see above. Defaults to `"layer-bn-act"`.
        normalization: The BN layer to add: `None` for
            `bn_keras.layers.BatchNormalization()`, a dict of its arguments,
            a registry name (`"batch"`, `"ghost"`, `"renorm"`), or a layer
            instance used as a template (see
            `bn_keras.registry.get_normalization`). A channels-first layer
            gets BN on axis 1 unless the specification sets `axis`.
            Defaults to `None`.
        layers: `None` for every Dense and convolution layer (see above), a
            list of layer names (any layer that maps features to features;
            nested layers included), or a callable `layer -> bool` called on
            every layer. Defaults to `None`.
        input_batchnorm: What standardizes every floating-point model
            input, in place of doing it by hand: a BN layer before anything
            else (named `"<input>_bn"`), without `gamma` and `beta`
            (`center=False`, `scale=False`), as the next layer's kernel and
            bias make them redundant. Integer inputs (token ids) are left
            alone. One of:
            - `False`, `None` or `"none"`: no input normalization;
            - `"renorm"`: the input normalizer that works: batch
              renormalization, unclipped, with cumulative statistics
              (`momentum=None`, `renorm_momentum=None`). Each training
              batch is standardized by the mean and variance of all the
              batches before it (the first by its own), with the gradient
              of batch normalization; after training, inference
              standardizes by the training data's statistics. No pass over
              the data is needed before training. Its epsilon is Keras's
              1e-3: a feature whose standard deviation is below about 0.03
              comes out with less than unit variance (a dict with a
              smaller `epsilon` avoids that);
            - `"batch"`: plain BN: each training batch standardized by its
              own statistics, and inference by moving averages of them;
            - `True`: `normalization`'s layer (plain BN by default), as
              before `"renorm"` existed;
            - a dict of `bn_keras.layers.BatchNormalization` arguments, or
              a layer used as a template, as for `normalization` (a dict
              may set `center` and `scale`; a template keeps its own).
            On `examples/input_batchnorm.py` (features on scales 1-10 and
            1-200, Adam, 20 epochs, 3 seeds), `"renorm"`'s best validation
            error is that of standardizing by hand (1.01x and 1.02x the
            median at batch 8 and 32, 1.14x at worst), `"batch"`'s 270 to
            520 times higher: each training batch standardized by its own
            statistics is noise the network cannot undo. The default is
            `False`, not `"renorm"`: an input normalization changes the
            function the model computes from its inputs, which a rewrite
            of the layers should not do unasked, and inputs already on a
            common scale (pixels in [0, 1], embeddings) do not need one;
            on the example's data, Adam on the raw features does as well
            as on standardized ones. Defaults to `False`.

    Returns:
        A new model of the same kind.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((4,)),
    ...     keras.layers.Dense(8, activation="relu", name="hidden"),
    ...     keras.layers.Dense(1, name="out"),
    ... ])
    >>> new = bn_keras.insert_batchnorm(model)
    >>> [layer.name for layer in new.layers]
    ['hidden', 'hidden_bn', 'hidden_act', 'out']
    """
    order = registry.placement_order(placement)
    registry.get_normalization(normalization)  # a bad value fails here
    kind = model_kind(model, "insert_batchnorm")
    input_bn = _input_normalizer(model, kind, input_batchnorm, normalization)
    select = _select(model, layers)

    def make_bn(axis, name):
        return registry.get_normalization(normalization, axis=axis, name=name)

    ends = input_layers if order == _BN_ACT_LAYER else output_layers
    edges = {id(layer) for layer in ends(model, "insert_batchnorm")}
    insertion = _Insertion(order, make_bn, select, edges)
    return rewrite(model, "insert_batchnorm", insertion.make_replace, input_bn)


def _input_normalizer(model, kind, input_batchnorm, normalization):
    """`input_layers` of `rewrite` for `input_batchnorm`: the BN of each
    floating-point model input (named `"<input>_bn"`), or `None`."""
    make_input_bn = _input_layer_factory(input_batchnorm, normalization)
    if make_input_bn is None:
        return None
    if kind == "sequential" and not model.built:
        raise ValueError(
            "Argument `input_batchnorm` needs to know the model's inputs: "
            "build the Sequential model first (start it with "
            "`keras.Input`). Received: model built=False"
        )
    taken = all_layer_names(model)

    def input_bn(input_name, dtype):
        if not keras.backend.is_float_dtype(dtype):
            logger.info(
                "insert_batchnorm: input '%s' is %s, not normalized.",
                input_name,
                dtype,
            )
            return None
        return make_input_bn(
            axis=-1, name=unique_name(f"{input_name}_bn", taken)
        )

    return input_bn
