"""Add batch normalization to an existing Sequential or Functional model.

The private helpers at the top (model kind, layer graph, layer copies and
the rebuild itself) are shared with `fold_batchnorm`.
"""

import logging

import keras

from bn_keras import registry
from bn_keras._validation import check_bool

logger = logging.getLogger("bn_keras")

#: The Dense and convolution layers that BN is inserted around by default.
DENSE_CONV_LAYERS = (
    keras.layers.Dense,
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
    keras.layers.SeparableConv1D,
    keras.layers.SeparableConv2D,
    keras.layers.DepthwiseConv1D,
    keras.layers.DepthwiseConv2D,
)

#: Stand-alone activation layers (`layer-act-bn` puts BN after them).
_ACTIVATION_LAYERS = (
    keras.layers.Activation,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.ELU,
    keras.layers.PReLU,
    keras.layers.Softmax,
)


# -- shared helpers -----------------------------------------------------------


def _model_kind(model, function_name):
    """'sequential' or 'functional'; a clear error for anything else."""
    if isinstance(model, keras.Sequential):
        return "sequential"
    if isinstance(model, keras.Model) and isinstance(model, keras.Function):
        return "functional"
    if isinstance(model, keras.Model):
        raise TypeError(
            f"`{function_name}` rewrites a model's graph of layers, and a "
            "subclassed model has none to rewrite: its forward pass is the "
            "Python code of its `call()` method, which bn_keras cannot read "
            "or change. Add the layers in `call()` yourself (for example "
            "with `bn_keras.layers.BNBlock`), or build the model with the "
            "Sequential or Functional API. "
            f"Received: model=<subclassed model {type(model).__name__} "
            f"name={model.name}>"
        )
    raise TypeError(
        f"`{function_name}` expects a Sequential or Functional "
        f"`keras.Model`. Received: model={model!r}"
    )


def _is_linear(layer):
    activation = getattr(layer, "activation", None)
    return activation is None or activation is keras.activations.linear


def _channel_axis(layer):
    return 1 if getattr(layer, "data_format", None) == "channels_first" else -1


def _copy_layer(layer, **changes):
    """A new, unbuilt layer of the same class with `changes` to its config."""
    config = layer.get_config()
    config.update(changes)
    try:
        return type(layer).from_config(config)
    except Exception as error:  # a custom layer without a usable config
        raise TypeError(
            f"Cannot copy layer '{layer.name}' ({type(layer).__name__}) from "
            f"its config, which rebuilding the model needs: {error}. Give the "
            "layer a `get_config()` that lists its constructor arguments. "
            f"Received: layer={layer.name}"
        ) from error


def _set_weights(layer, weights):
    if weights is not None and layer.built:
        layer.set_weights(weights)


def _history_refs(value):
    """Layer names of the tensors referenced in a serialized node."""
    refs = []
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            refs.append(value["config"]["keras_history"][0])
        else:
            for item in value.values():
                refs.extend(_history_refs(item))
    elif isinstance(value, (list, tuple)):
        for item in value:
            refs.extend(_history_refs(item))
    return refs


def _output_refs(value):
    """Layer names in a functional config's `output_layers` entry."""
    if isinstance(value, dict):
        return [n for v in value.values() for n in _output_refs(v)]
    if (
        isinstance(value, (list, tuple))
        and len(value) == 3
        and isinstance(value[0], str)
        and isinstance(value[1], int)
    ):
        return [value[0]]
    if isinstance(value, (list, tuple)):
        return [n for v in value for n in _output_refs(v)]
    return []


class _LayerGraph:
    """Which layer feeds which, for a Sequential or Functional model.

    Built from public information only (the layer list of a Sequential
    model, the `inbound_nodes` of a Functional model's config). Attributes:

    - `layers`: the model's layers, without its `InputLayer`s;
    - `calls[name]`: how many times the layer is called in the model;
    - `producers[name]`: names of the layers whose outputs it consumes, one
      entry per tensor (model inputs are left out);
    - `consumers[name]`: names of the layers that consume its outputs, one
      entry per use;
    - `outputs`: names of the layers that produce a model output, once per
      output.
    """

    def __init__(self, model, kind):
        self.layers = [
            layer
            for layer in model.layers
            if not isinstance(layer, keras.layers.InputLayer)
        ]
        names = [layer.name for layer in self.layers]
        self.by_name = dict(zip(names, self.layers))
        self.calls = {name: 1 for name in names}
        self.producers = {name: [] for name in names}
        self.consumers = {name: [] for name in names}
        if kind == "sequential":
            for before, after in zip(names, names[1:]):
                self.producers[after].append(before)
                self.consumers[before].append(after)
            self.outputs = names[-1:]
            return
        config = model.get_config()
        if not isinstance(config, dict) or "layers" not in config:
            raise TypeError(
                "This Functional model's `get_config()` does not describe "
                "its layers, so its graph cannot be read. "
                f"Received: model=<{type(model).__name__} name={model.name}>"
            )
        for entry in config["layers"]:
            name = entry["name"]
            if name not in self.by_name:
                continue  # an input layer
            nodes = entry.get("inbound_nodes", [])
            self.calls[name] = len(nodes)
            for node in nodes:
                for ref in _history_refs(node):
                    if ref in self.by_name:
                        self.producers[name].append(ref)
                        self.consumers[ref].append(name)
        self.outputs = _output_refs(config.get("output_layers", []))

    def single_path(self, producer, consumer):
        """Whether `producer`'s output feeds `consumer` only, once each."""
        return (
            self.calls[producer] == 1
            and self.calls[consumer] == 1
            and self.consumers[producer] == [consumer]
            and self.producers[consumer] == [producer]
            and producer not in self.outputs
        )


def _input_names(model, kind):
    """Names of the model's input layers, in the order of `model.inputs`."""
    tensors = list(model.inputs)
    try:
        config = model.get_config()
        if kind == "sequential":
            first = config["layers"][0]
            names = (
                [first["config"]["name"]]
                if first["class_name"] == "InputLayer"
                else []
            )
        else:
            names = _output_refs(config["input_layers"])
    except (KeyError, IndexError, TypeError, NotImplementedError):
        # a model with a custom config: use the tensor names
        names = []
    if len(names) != len(tensors) or (
        kind == "functional" and isinstance(model.input, dict)
    ):
        names = [tensor.name for tensor in tensors]
    return names


def _unique_name(base, taken):
    name, i = base, 1
    while name in taken:
        name = f"{base}_{i}"
        i += 1
    taken.add(name)
    return name


class _Replacement:
    """What one layer becomes in the rebuilt model.

    `before` layers apply to the layer's first input, `main` is called like
    the original layer (or is `None` to drop it: its first input passes
    through), `after` layers apply to its output. `weights`, if not `None`,
    are set on `main` once it is built. `make_extra` builds fresh `before`
    and `after` layers, once per call of a shared layer.
    """

    def __init__(self, main, weights=None, make_extra=None):
        self.main = main
        self.weights = weights
        self.make_extra = make_extra or (lambda: ((), ()))


def _rebuild(model, kind, replace, input_layers=None):
    """A new model in which each layer is swapped for `replace(layer)`.

    Args:
        model: A Sequential or Functional model.
        kind: `_model_kind(model)`.
        replace: Function from an original layer to a `_Replacement`.
        input_layers: Optional function from a model input's name to a
            layer applied to that input (e.g. BN), or None.

    Returns:
        The new model, of the same kind, compiled as the old one if it was.
    """
    replacements = {}

    def replacement(layer):
        if id(layer) not in replacements:
            replacements[id(layer)] = replace(layer)
        return replacements[id(layer)]

    if kind == "sequential":
        inputs = []
        if model.built and getattr(model, "inputs", None):
            spec = model.inputs[0]
            name = _input_names(model, kind)[0]
            inputs = [
                keras.Input(batch_shape=spec.shape, dtype=spec.dtype, name=name)
            ]
            if input_layers is not None:
                extra = input_layers(name, spec.dtype)
                if extra is not None:
                    inputs.append(extra)
        new_layers = []
        for i, layer in enumerate(model.layers):
            step = replacement(layer)
            before, after = step.make_extra()
            if i == 0 and len(inputs) == 2:
                before = ()  # the input is normalized already
            main = [] if step.main is None else [step.main]
            new_layers += [*before, *main, *after]
        new_model = keras.Sequential(
            inputs + new_layers, name=model.name, trainable=model.trainable
        )
        for step in replacements.values():
            if step.main is not None:
                _set_weights(step.main, step.weights)
    else:
        names = iter(_input_names(model, kind))
        new_inputs = keras.tree.map_structure(
            lambda x: keras.Input(
                batch_shape=x.shape, dtype=x.dtype, name=next(names)
            ),
            model.input,
        )
        input_map, weights_set = {}, set()
        if input_layers is not None:
            for name, tensor in zip(
                _input_names(model, kind), keras.tree.flatten(new_inputs)
            ):
                layer = input_layers(name, tensor.dtype)
                if layer is not None:
                    input_map[id(tensor)] = layer(tensor)

        def call_function(layer, *args, **kwargs):
            if input_map:
                args, kwargs = keras.tree.map_structure(
                    lambda t: input_map.get(id(t), t), (args, kwargs)
                )
            step = replacement(layer)
            before, after = step.make_extra()
            args = list(args)
            if any(args[0] is t for t in input_map.values()):
                before = ()  # the input is normalized already
            for extra in before:
                args[0] = extra(args[0])
            if step.main is None:
                outputs = args[0]
            else:
                outputs = step.main(*args, **kwargs)
                if id(step.main) not in weights_set:
                    _set_weights(step.main, step.weights)
                    weights_set.add(id(step.main))
            for extra in after:
                outputs = extra(outputs)
            return outputs

        new_model = keras.models.clone_model(
            model,
            input_tensors=new_inputs,
            clone_function=lambda layer: layer,
            call_function=call_function,
        )
    if model.compiled and not new_model.compiled:
        new_model.compile_from_config(model.get_compile_config())
    return new_model


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
    known = _all_layer_names(model)
    unknown = sorted(names - known)
    if unknown:
        candidates = sorted(
            {
                layer.name
                for layer in _all_layers(model)
                if isinstance(layer, DENSE_CONV_LAYERS)
            }
        )
        raise ValueError(
            f"Argument `layers` names layers that the model does not have: "
            f"{unknown}. Its Dense and convolution layers are {candidates}. "
            f"Received: layers={list(layers)!r}"
        )
    return lambda layer: layer.name in names


def _all_layers(model):
    found = []
    for layer in model.layers:
        found.append(layer)
        if isinstance(layer, keras.Model):
            found.extend(_all_layers(layer))
    return found


def _all_layer_names(model):
    return {layer.name for layer in _all_layers(model)}


def _contains_dense_conv(layer):
    if isinstance(layer, DENSE_CONV_LAYERS):
        return True
    return any(
        _contains_dense_conv(sub) for sub in getattr(layer, "layers", [])
    )


def _insert(model, order, make_bn, select, at_output, input_bn):
    """`insert_batchnorm` on one (possibly nested) model."""
    kind = _model_kind(model, "insert_batchnorm")
    graph = _LayerGraph(model, kind)
    taken = {layer.name for layer in _all_layers(model)}
    if model.built:
        taken |= set(_input_names(model, kind))

    # Layers after which no Dense/conv layer follows (in this model, and in
    # the enclosing ones when `at_output`) are output layers: by default BN
    # does not go after them (it would normalize the logits or targets).
    downstream = {}

    def dense_conv_downstream(name):
        if name not in downstream:
            downstream[name] = False  # cycles cannot occur; guards anyway
            downstream[name] = any(
                _contains_dense_conv(graph.by_name[c])
                or dense_conv_downstream(c)
                for c in graph.consumers[name]
            )
        return downstream[name]

    def is_output_layer(layer):
        return at_output and not dense_conv_downstream(layer.name)

    def selected(layer):
        if isinstance(layer, keras.Model):
            return False
        if select is not None:
            return bool(select(layer))
        if not isinstance(layer, DENSE_CONV_LAYERS):
            return False
        return order[0] == "bn" or not is_output_layer(layer)

    # With "layer-act-bn", a linear layer followed only by a stand-alone
    # activation layer gets its BN after that activation layer.
    bn_after = {}  # activation layer name -> the layer it normalizes for
    for layer in graph.layers:
        if order == ("layer", "act", "bn") and selected(layer):
            consumers = graph.consumers[layer.name]
            if (
                _is_linear(layer)
                and len(consumers) == 1
                and isinstance(graph.by_name[consumers[0]], _ACTIVATION_LAYERS)
                and graph.single_path(layer.name, consumers[0])
            ):
                bn_after[consumers[0]] = layer

    def bn_for(layer):
        return make_bn(
            _channel_axis(layer), _unique_name(f"{layer.name}_bn", taken)
        )

    def replace(layer):
        if isinstance(layer, keras.Model):
            nested_at_output = at_output and not dense_conv_downstream(
                layer.name
            )
            return _Replacement(
                _insert(layer, order, make_bn, select, nested_at_output, None)
            )
        if layer.name in bn_after:
            normalized = bn_after[layer.name]
            return _Replacement(
                _copy_layer(layer),
                layer.get_weights(),
                lambda: ((), (bn_for(normalized),)),
            )
        if not selected(layer) or "bn" not in order:
            return _Replacement(_copy_layer(layer), layer.get_weights())
        if order[0] == "bn":
            return _Replacement(
                _copy_layer(layer),
                layer.get_weights(),
                lambda: ((bn_for(layer),), ()),
            )
        if order == ("layer", "act", "bn"):
            if layer.name in {b.name for b in bn_after.values()}:
                return _Replacement(_copy_layer(layer), layer.get_weights())
            return _Replacement(
                _copy_layer(layer),
                layer.get_weights(),
                lambda: ((), (bn_for(layer),)),
            )
        # "layer-bn-act": split the layer's own activation out.
        if _is_linear(layer):
            return _Replacement(
                _copy_layer(layer),
                layer.get_weights(),
                lambda: ((), (bn_for(layer),)),
            )
        activation = layer.get_config()["activation"]

        def extra():
            act = keras.layers.Activation(
                activation, name=_unique_name(f"{layer.name}_act", taken)
            )
            return (), (bn_for(layer), act)

        return _Replacement(
            _copy_layer(layer, activation="linear"), layer.get_weights(), extra
        )

    return _rebuild(model, kind, replace, input_bn)


def insert_batchnorm(
    model,
    placement="layer-bn-act",
    normalization=None,
    layers=None,
    input_batchnorm=False,
):
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
        input_batchnorm: If `True`, every floating-point model input gets a
            BN layer before anything else (named `"<input>_bn"`), which
            standardizes the data in place of doing it by hand: with batch
            statistics in training, with its moving statistics in
            inference. It has no `gamma` and `beta` (`center=False`,
            `scale=False`; a dict in `normalization` may set them, a layer
            template keeps its own), as the next layer's kernel and bias
            make them redundant. Integer inputs
            (token ids) are left alone. Defaults to `False`.

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
    kind = _model_kind(model, "insert_batchnorm")
    input_batchnorm = check_bool("input_batchnorm", input_batchnorm)
    select = _select(model, layers)

    def make_bn(axis, name):
        return registry.get_normalization(normalization, axis=axis, name=name)

    input_bn = None
    if input_batchnorm:
        taken = _all_layer_names(model)

        def input_bn(input_name, dtype):
            if not keras.backend.is_float_dtype(dtype):
                logger.info(
                    "insert_batchnorm: input '%s' is %s, not normalized.",
                    input_name,
                    dtype,
                )
                return None
            # Standardization only: an affine map right after it would be
            # redundant with the next layer's kernel and bias.
            return registry.get_normalization(
                normalization,
                axis=-1,
                center=False,
                scale=False,
                name=_unique_name(f"{input_name}_bn", taken),
            )

    if kind == "sequential" and input_batchnorm and not model.built:
        raise ValueError(
            "`input_batchnorm=True` needs to know the model's inputs: build "
            "the Sequential model first (start it with `keras.Input`). "
            "Received: model built=False"
        )
    return _insert(model, order, make_bn, select, True, input_bn)
