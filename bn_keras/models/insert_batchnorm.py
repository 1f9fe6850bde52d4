"""Add batch normalization to an existing Sequential or Functional model."""

from __future__ import annotations

import logging

import keras

from bn_keras import registry
from bn_keras._typing import InputNormalization
from bn_keras._typing import LayerSelection
from bn_keras._typing import Normalization
from bn_keras.layers._layer_kinds import ACTIVATION_LAYERS
from bn_keras.layers._layer_kinds import DENSE_CONV_LAYERS
from bn_keras.layers._layer_kinds import channel_axis
from bn_keras.layers._layer_kinds import is_linear
from bn_keras.models._graph import LayerGraph
from bn_keras.models._graph import Replacement
from bn_keras.models._graph import all_layer_names
from bn_keras.models._graph import all_layers
from bn_keras.models._graph import copied
from bn_keras.models._graph import copy_layer
from bn_keras.models._graph import input_names
from bn_keras.models._graph import model_kind
from bn_keras.models._graph import output_layers
from bn_keras.models._graph import rebuild
from bn_keras.models._graph import unique_name

logger = logging.getLogger("bn_keras")

# -- insert_batchnorm ---------------------------------------------------------


def _select(model, layers):
    """Returns a predicate `layer -> bool` for the `layers` argument."""
    if layers is None:
        return None
    if callable(layers):
        return layers
    if isinstance(layers, str):
        layers = [layers]
    if not isinstance(layers, (list, tuple, set)) or not all(
        isinstance(name, str) for name in layers
    ):
        raise TypeError(
            "Argument `layers` must be None, a list of layer names or a "
            f"callable `layer -> bool`. Received: layers={layers!r}"
        )
    names = set(layers)
    known = all_layer_names(model)
    unknown = sorted(names - known)
    if unknown:
        candidates = sorted(
            {
                layer.name
                for layer in all_layers(model)
                if isinstance(layer, DENSE_CONV_LAYERS)
            }
        )
        raise ValueError(
            f"Argument `layers` names layers that the model does not have: "
            f"{unknown}. Its Dense and convolution layers are {candidates}. "
            f"Received: layers={list(layers)!r}"
        )
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


class _Insertion:
    """What `insert_batchnorm` adds, applied to a model and its sub-models.

    `order` is the placement's order of steps, `make_bn(axis, name)` makes
    a BN layer, `select` is the predicate of the `layers` argument (None
    for every Dense and convolution layer), and `outputs` holds the ids of
    the model's `output_layers`, which by default get no BN after them (it
    would normalize the logits or the target).
    """

    def __init__(self, order, make_bn, select, outputs):
        self.order = order
        self.make_bn = make_bn
        self.select = select
        self.outputs = outputs

    def selected(self, layer):
        """Whether `layer` gets a BN of its own."""
        if isinstance(layer, keras.Model):
            return False
        if self.select is not None:
            return bool(self.select(layer))
        if not isinstance(layer, DENSE_CONV_LAYERS):
            return False
        return self.order[0] == "bn" or id(layer) not in self.outputs

    def rewrite(self, model, input_bn=None):
        """A copy of `model` (or of a sub-model) with BN added."""
        kind = model_kind(model, "insert_batchnorm")
        graph = LayerGraph(model, kind)
        taken = all_layer_names(model)
        if model.built:
            taken |= set(input_names(model, kind))
        bn_after = self._bn_after_activation(graph)

        def bn_for(layer):
            name = unique_name(f"{layer.name}_bn", taken)
            return self.make_bn(channel_axis(layer), name)

        def replace(layer):
            if isinstance(layer, keras.Model):
                return Replacement(self.rewrite(layer))
            if layer.name in bn_after:
                normalized = bn_after[layer.name]
                return copied(layer, lambda: ((), (bn_for(normalized),)))
            moved = layer.name in {b.name for b in bn_after.values()}
            if moved or not self.selected(layer) or "bn" not in self.order:
                return copied(layer)
            return self._with_bn(layer, bn_for, taken)

        return rebuild(model, kind, replace, input_bn)

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
        """The replacement of a selected layer: BN at the placement."""
        if self.order[0] == "bn":
            return copied(layer, lambda: ((bn_for(layer),), ()))
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
            copy_layer(layer, activation="linear"), layer.get_weights(), extra
        )


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
    chosen with `layers`, gets a new BN layer at `placement`:

    - `"layer-bn-act"` (alias `"before_activation"`): layer, BN,
      activation. An activation set inside the layer
      (`Dense(64, activation="relu")`) is split out into an `Activation`
      layer so that BN can go between.
    - `"layer-act-bn"` (alias `"after_activation"`): BN after the layer's
      activation, whether it is set inside the layer or is a stand-alone
      activation layer (`Activation`, `ReLU`, ...) that directly follows
      it.
    - `"bn-act-layer"` (alias `"pre_activation"`): BN on the layer's input.
      Activations are never moved from one layer to another, so a model
      built as layer, activation, layer becomes layer, activation, BN,
      layer.
    - `"layer-act"` (aliases `"none"`, `None`): no BN in the layers (use it
      with `input_batchnorm=True` to normalize the inputs only).

    With `layers=None`, the last Dense or convolution layer of each path to
    an output (the one that computes logits or the regression target) gets
    no BN after it; name it in `layers` if you want one. New layers are
    named after the layer they serve (`"dense_bn"`, `"dense_act"`).

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
    make_input_bn = _input_layer_factory(input_batchnorm, normalization)
    select = _select(model, layers)

    def make_bn(axis, name):
        return registry.get_normalization(normalization, axis=axis, name=name)

    input_bn = None
    if make_input_bn is not None:
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

    if kind == "sequential" and make_input_bn is not None and not model.built:
        raise ValueError(
            "Argument `input_batchnorm` needs to know the model's inputs: "
            "build the Sequential model first (start it with "
            "`keras.Input`). Received: model built=False"
        )
    outputs = {id(layer) for layer in output_layers(model, "insert_batchnorm")}
    insertion = _Insertion(order, make_bn, select, outputs)
    return insertion.rewrite(model, input_bn)
