"""The graph of layers of a Sequential or Functional model, and rewriting it.

The one skeleton of the graph rewrites (`insert_batchnorm`,
`convert_batchnorm`, `fold_batchnorm`, and the placement hypermodel
through `insert_batchnorm`): `check_layer_names` checks a `layers=`
argument, and `rewrite` rebuilds a model of either kind with a per-layer
replacement function, recursing into nested models. Around it: which kind
of model it is, which layer feeds which (`LayerGraph`, which `bn-keras
inspect` and the fold plan read too), which layers compute its outputs and
which read its inputs. The kinds of layers (Dense and convolution,
activation) come from `bn_keras.layers._layer_kinds`, which `BNBlock`
shares."""

import keras

from bn_keras._statistics import weight_values
from bn_keras.layers._layer_kinds import DENSE_CONV_LAYERS


class GraphError(TypeError):
    """A model whose graph of layers cannot be read or rewritten.

    The message is `reason`, then what to do and the value received, in
    the house style; `reason` alone (one sentence, no final period) is what
    `bn-keras inspect` shows beside each BN layer it cannot fold.
    """

    def __init__(self, reason, rest):
        super().__init__(f"{reason}. {rest}")
        self.reason = reason


def model_kind(model, function_name):
    """'sequential' or 'functional'; a `GraphError` for anything else."""
    if isinstance(model, keras.Sequential):
        return "sequential"
    if isinstance(model, keras.Model) and isinstance(model, keras.Function):
        return "functional"
    if isinstance(model, keras.Model):
        raise GraphError(
            f"`{function_name}` rewrites a model's graph of layers, and a "
            "subclassed model has none to rewrite: its forward pass is the "
            "Python code of its `call()` method, which bn_keras cannot read "
            "or change",
            "Add the layers in `call()` yourself (for example "
            "with `bn_keras.layers.BNBlock`), or build the model with the "
            "Sequential or Functional API. "
            f"Received: model=<subclassed model {type(model).__name__} "
            f"name={model.name}>",
        )
    raise GraphError(
        f"`{function_name}` expects a Sequential or Functional `keras.Model`",
        f"Received: model={model!r}",
    )


def copy_layer(layer, **changes):
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


def is_raw_op(operation):
    """Whether a node of a Functional graph is a raw tensor operation.

    `h * 2.0`, `h + 1.0` or `keras.ops.relu(h)` on the symbolic tensors of
    a Functional model add a `keras.Operation` to its graph that is not a
    layer: it has no weights and is not in `model.layers`, but it is in
    `model.operations` and in the model's config. Rewrites call it as it
    is, on the new model's tensors.
    """
    return isinstance(operation, keras.Operation) and not isinstance(
        operation, keras.layers.Layer
    )


class LayerGraph:
    """Which layer feeds which, for a Sequential or Functional model.

    Built from public information only (the layer list of a Sequential
    model; the `operations` of a Functional model and the `inbound_nodes`
    of its config). The nodes are the model's layers and, in a Functional
    model, its raw tensor operations (`h * 2.0`, `keras.ops.relu(h)`; see
    `is_raw_op`), so that a layer whose output also feeds an operation is
    known to feed more than one node. Attributes:

    - `layers`: the model's layers, without its `InputLayer`s;
    - `ops`: its raw tensor operations, in the order of `model.operations`;
    - `by_name[name]`: the layer or operation of that name;
    - `calls[name]`: how many times the node is called in the model;
    - `producers[name]`: names of the nodes whose outputs it consumes, one
      entry per tensor (model inputs are left out);
    - `consumers[name]`: names of the nodes that consume its outputs, one
      entry per use;
    - `outputs`: names of the nodes that produce a model output, once per
      output;
    - `kind`: `"sequential"` or `"functional"`.
    """

    def __init__(self, model, kind):
        self.kind = kind
        self.layers = [
            layer
            for layer in model.layers
            if not isinstance(layer, keras.layers.InputLayer)
        ]
        self.ops = []
        if kind == "functional":
            self.ops = [op for op in model.operations if is_raw_op(op)]
        names = [node.name for node in self.layers + self.ops]
        self.by_name = dict(zip(names, self.layers + self.ops))
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
            raise GraphError(
                "This Functional model's `get_config()` does not describe "
                "its layers, so its graph cannot be read",
                f"Received: model=<{type(model).__name__} name={model.name}>",
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


def input_names(model, kind):
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


def unique_name(base, taken):
    name, i = base, 1
    while name in taken:
        name = f"{base}_{i}"
        i += 1
    taken.add(name)
    return name


def check_layer_names(
    layers, known, listed, what="layer", label=None, allow_callable=False
):
    """The one check of a `layers=` argument of the graph rewrites.

    Args:
        layers: `None`, a layer name, a list (tuple, set) of names, or,
            with `allow_callable`, a callable `layer -> bool`.
        known: The names `layers` may name (the model's layers, nested
            ones included, or only its BN layers).
        listed: The names the error for an unknown name lists.
        what: What a name names, for the messages. Defaults to `"layer"`.
        label: What `listed` are, for the message. Defaults to
            `"{what}s"`.
        allow_callable: Whether a callable is accepted. Defaults to
            `False`.

    Returns:
        `None`, the callable, or the set of names.

    Raises:
        TypeError: for anything else; ValueError: for a name not in
            `known`, with `listed` in the message.

    >>> bn_keras.models._graph.check_layer_names("a", {"a", "b"}, ["a"])
    {'a'}
    """
    if layers is None or (allow_callable and callable(layers)):
        return layers
    names = [layers] if isinstance(layers, str) else layers
    if not isinstance(names, (list, tuple, set)) or not all(
        isinstance(name, str) for name in names
    ):
        callable_too = ", or a callable `layer -> bool`" * allow_callable
        raise TypeError(
            f"Argument `layers` must be None, a name or a list of names of "
            f"{what}s{callable_too}. Received: layers={layers!r}"
        )
    known = set(known)
    for name in sorted(names):
        if name not in known:
            unknown = sorted(set(names) - known)
            raise ValueError(
                f"Argument `layers` names no {what} of the model: {unknown}. "
                f"Its {label or what + 's'} are {sorted(set(listed))}. "
                f"Received: layers={list(names)!r}"
            )
    return set(names)


class Replacement:
    """What one layer becomes in the rebuilt model.

    `before` layers apply to the layer's first input, `main` is called like
    the original layer (or is `None` to drop it: its first input passes
    through), `after` layers apply to its output. `weights`, if not `None`,
    are set on `main` once it is built. `make_extra` builds fresh `before`
    and `after` layers, once per call of a shared layer: it returns
    `(before, after)` or `(before, after, routes)`, where `routes` maps the
    name of a consumer of the output to the layers that the output goes
    through for that consumer instead of `after` (the activation moved out
    of a layer to the edge towards the next, with BN before it). With
    routes, `after` is `None` when every consumer is routed and the output
    is no model output.
    """

    def __init__(self, main, weights=None, make_extra=None, copies=()):
        self.main = main
        self.weights = weights
        self.make_extra = make_extra or (lambda: ((), ()))
        # (layer, weights) of copied layers among the extra ones (a
        # stand-alone activation with weights, `PReLU`, moved by a route).
        self.copies = list(copies)

    def extras(self):
        """`(before, after, routes)`, fresh."""
        before, after, *routes = self.make_extra()
        return before, after, (routes[0] if routes else {})

    def set_weights(self):
        """Sets the weights kept for `main` and the copies, once built."""
        for layer, weights in [(self.main, self.weights), *self.copies]:
            if layer is not None and weights is not None and layer.built:
                layer.set_weights(weights)


def copied(layer, make_extra=None):
    """The `Replacement` that copies `layer` with its weights.

    A `keras.layers.Lambda` is used as it is, as a raw operation is: it
    has no weights of its own, and its Python function cannot be copied
    from its config (Keras's safe mode refuses to deserialize a lambda).
    """
    if isinstance(layer, keras.layers.Lambda):
        return Replacement(layer, None, make_extra)
    return Replacement(copy_layer(layer), weight_values(layer), make_extra)


def rewrite(
    model, function_name, make_replace, input_layers=None, compiled=True
):
    """A new model of the same kind, each layer swapped for its replacement.

    The skeleton of every graph rewrite: checks the kind of model, reads
    its `LayerGraph`, asks `make_replace(model, graph, path)` for the
    function `replace(layer) -> Replacement or None` of this model (or
    nested model), and rebuilds. `None` is the default: a nested model is
    rewritten the same way (its `path` is the names of the models around
    it, `"inner/"`), any other layer copied with its weights.

    Args:
        model: A Sequential or Functional model (any other raises the
            `GraphError` of `model_kind`, naming `function_name`).
        function_name: The public function, for the errors.
        make_replace: Function `(model, graph, path) -> replace`.
        input_layers: Optional function `(input name, dtype) -> layer or
            None`, the layer (e.g. BN) applied to that model input (of the
            outer model only).
        compiled: Whether the new model is compiled as the old one, if it
            was. Defaults to `True`.

    Returns:
        The new model.
    """

    def rewritten(current, path, inputs):
        kind = model_kind(current, function_name)
        replace = make_replace(current, LayerGraph(current, kind), path)

        def each(layer):
            step = replace(layer)
            if step is not None:
                return step
            if isinstance(layer, keras.Model):
                inner = rewritten(layer, f"{path}{layer.name}/", None)
                return Replacement(inner)
            return copied(layer)

        return rebuild(current, kind, each, inputs, compiled)

    return rewritten(model, "", input_layers)


def rebuild(model, kind, replace, input_layers=None, compiled=True):
    """A new model in which each layer is swapped for `replace(layer)`.

    Args:
        model: A Sequential or Functional model.
        kind: `model_kind(model)`.
        replace: Function from an original layer to a `Replacement`; it is
            called once per layer, however many times the layer is called.
        input_layers: Optional function `(input name, dtype) -> layer or
            None`, the layer (e.g. BN) applied to that model input.
        compiled: Whether the new model is compiled as the old one, if it
            was. Defaults to `True`.

    Returns:
        The new model, of the same kind.
    """
    replacements = {}

    def replacement(layer):
        if id(layer) not in replacements:
            replacements[id(layer)] = replace(layer)
        return replacements[id(layer)]

    if kind == "sequential":
        new_model = _rebuild_sequential(model, replacement, input_layers)
    else:
        new_model = _rebuild_functional(model, replacement, input_layers)
    for step in replacements.values():
        step.set_weights()
    if compiled and model.compiled and not new_model.compiled:
        new_model.compile_from_config(model.get_compile_config())
    if not compiled and new_model.compiled:
        # `clone_model` compiles the copy of a compiled model (and so
        # builds its optimizer's state): the same graph, uncompiled.
        new_model = keras.Model(
            new_model.input,
            new_model.output,
            name=model.name,
            trainable=model.trainable,
        )
    return new_model


def _sequential_inputs(model, input_layers):
    """The new model's `Input` and the layer applied to it, if known."""
    if not (model.built and getattr(model, "inputs", None)):
        return []
    spec = model.inputs[0]
    name = input_names(model, "sequential")[0]
    inputs = [keras.Input(batch_shape=spec.shape, dtype=spec.dtype, name=name)]
    if input_layers is not None:
        extra = input_layers(name, spec.dtype)
        if extra is not None:
            inputs.append(extra)
    return inputs


def _rebuild_sequential(model, replacement, input_layers):
    inputs = _sequential_inputs(model, input_layers)
    new_layers = []
    layers = model.layers
    for i, layer in enumerate(layers):
        step = replacement(layer)
        before, after, routes = step.extras()
        following = layers[i + 1].name if i + 1 < len(layers) else None
        if following in routes:
            after = routes[following]
        if i == 0 and len(inputs) == 2:
            before = ()  # the input is normalized already
        main = [] if step.main is None else [step.main]
        new_layers += [*before, *main, *(after or ())]
    return keras.Sequential(
        inputs + new_layers, name=model.name, trainable=model.trainable
    )


def _rebuild_functional(model, replacement, input_layers):
    names = input_names(model, "functional")
    remaining = iter(names)
    new_inputs = keras.tree.map_structure(
        lambda x: keras.Input(
            batch_shape=x.shape, dtype=x.dtype, name=next(remaining)
        ),
        model.input,
    )
    normalized = {}  # id of a new input -> the output of its input layer
    if input_layers is not None:
        for name, tensor in zip(names, keras.tree.flatten(new_inputs)):
            layer = input_layers(name, tensor.dtype)
            if layer is not None:
                normalized[id(tensor)] = layer(tensor)
    return keras.models.clone_model(
        model,
        input_tensors=new_inputs,
        clone_function=lambda layer: layer,
        call_function=_FunctionalCall(replacement, normalized),
    )


def _apply(layers, tensor):
    for layer in layers:
        tensor = layer(tensor)
    return tensor


class _FunctionalCall:
    """The `call_function` of `clone_model` that applies the replacements.

    Every call of a layer or raw tensor operation in the original graph
    goes through it, with the new model's tensors: inputs that have an
    input layer are swapped for its output, and an output that a
    replacement routes to this consumer for the layers of its route; a raw
    operation (`h * 2.0`, see `is_raw_op`) is then called as it is, and a
    layer's replacement is called in the layer's place.
    """

    def __init__(self, replacement, normalized):
        self.replacement = replacement
        self.normalized = normalized
        # id of an output tensor -> (the main output, routes, their outputs)
        self.routed = {}

    def inputs_of(self, consumer, args, kwargs):
        def swap(tensor):
            tensor = self.normalized.get(id(tensor), tensor)
            entry = self.routed.get(id(tensor))
            if entry is None or consumer not in entry[1]:
                return tensor
            main_output, routes, done = entry
            if consumer not in done:
                done[consumer] = _apply(routes[consumer], main_output)
            return done[consumer]

        return keras.tree.map_structure(swap, (args, kwargs))

    def __call__(self, layer, *args, **kwargs):
        args, kwargs = self.inputs_of(layer.name, args, kwargs)
        if is_raw_op(layer):
            return layer(*args, **kwargs)  # stateless: nothing to copy
        step = self.replacement(layer)
        before, after, routes = step.extras()
        args = list(args)
        if any(args[0] is t for t in self.normalized.values()):
            before = ()  # the input is normalized already
        args[0] = _apply(before, args[0])
        if step.main is None:
            outputs = args[0]
        else:
            outputs = step.main(*args, **kwargs)
        default = outputs if after is None else _apply(after, outputs)
        if routes:
            self.routed[id(default)] = (outputs, routes, {})
        return default


def all_layers(model):
    found = []
    for layer in model.layers:
        found.append(layer)
        if isinstance(layer, keras.Model):
            found.extend(all_layers(layer))
    return found


def all_layer_names(model):
    return {layer.name for layer in all_layers(model)}


def contains_dense_conv(layer):
    if isinstance(layer, DENSE_CONV_LAYERS):
        return True
    return any(
        contains_dense_conv(sub) for sub in getattr(layer, "layers", [])
    )


def output_layers(model, function_name="output_layers"):
    """The layers after which no Dense or convolution layer follows.

    These compute a model output (the logits or the regression target) or
    come after the layer that does, so by default BN does not go after
    them. A layer of a nested model is one when no Dense or convolution
    layer follows it inside the nested model, and the nested model is one
    in the model around it.

    Args:
        model: A Sequential or Functional model.
        function_name: The function named in the error for a model whose
            graph cannot be read (see `model_kind`).

    Returns:
        The output layers, nested models' included, in the order of
        `all_layers(model)`.

    >>> model = keras.Sequential([
    ...     keras.Input((4,)),
    ...     keras.layers.Dense(8, name="hidden"),
    ...     keras.layers.Dense(1, name="out"),
    ...     keras.layers.Activation("sigmoid", name="prob"),
    ... ])
    >>> found = bn_keras.models._graph.output_layers(model)
    >>> [layer.name for layer in found]
    ['out', 'prob']
    """
    return _ends(model, function_name, "consumers")


def input_layers(model, function_name="input_layers"):
    """The layers before which no Dense or convolution layer comes.

    These read a model input, directly or through layers without weights
    (`Flatten`, pooling), or are such layers: by default the pre-activation
    placement `"bn-act-layer"` puts no BN before them (a model input has
    no activation to move, and standardizing it is `input_batchnorm`'s
    business). Nested models count as for `output_layers`.

    >>> model = keras.Sequential([
    ...     keras.Input((2, 2)),
    ...     keras.layers.Flatten(name="flat"),
    ...     keras.layers.Dense(8, name="hidden"),
    ...     keras.layers.Dense(1, name="out"),
    ... ])
    >>> [layer.name for layer in bn_keras.models._graph.input_layers(model)]
    ['flat', 'hidden']
    """
    return _ends(model, function_name, "producers")


def _ends(model, function_name, direction):
    """The layers with no Dense or convolution layer among the nodes that
    `direction` (`"consumers"` or `"producers"`) reaches from them."""
    graph = LayerGraph(model, model_kind(model, function_name))
    neighbours = getattr(graph, direction)
    reaches = {}

    def reaches_dense_conv(name):
        if name not in reaches:
            reaches[name] = False  # cycles cannot occur; guards anyway
            reaches[name] = any(
                contains_dense_conv(graph.by_name[other])
                or reaches_dense_conv(other)
                for other in neighbours[name]
            )
        return reaches[name]

    found = []
    for layer in graph.layers:
        if not reaches_dense_conv(layer.name):
            found.append(layer)
            if isinstance(layer, keras.Model):
                found.extend(_ends(layer, function_name, direction))
    return found
