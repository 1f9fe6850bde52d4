"""Whether two models are the same network, whatever their layers' names.

Two models are the same network when they have the same layers (class and
configuration) in the same order, wired the same way (each layer's inputs
named by position, not by name), and the same weights: then training them
the same way gives the same model. `network_signature` reduces a model to
a digest of exactly that, read from its public `get_config()` and weights,
so that two models are compared by comparing two strings.

This is how `bn-keras compare` and `bn-keras search` find configurations
that build one network, to train it once: on a chain of layers without
residual connections, pre-activation (`"bn-act-layer"`) puts each BN and
the activation moved after it between the same two layers as
`"layer-bn-act"` does; only the new layers' names differ.

What the rule leaves out, and why:

- Layer and model names, wherever the config names a layer (its own
  `name`, the inputs of a Functional node, the model's inputs and
  outputs). A layer nested in a wrapper (`TimeDistributed`) keeps its
  name: such models count as different, the safe side (trained twice).
- Random seed states (`Dropout`'s): they are not weights, and two
  configurations draw different dropout masks however alike they are.

Everything else counts: dtypes, initializers, momentum, epsilon, a renorm
schedule, the order of the layers (two Functional models that list the
same graph in a different order count as different: the safe side again).
"""

import hashlib
import json

import numpy as np

#: What a Functional config calls a reference to a node's output tensor.
_TENSOR = "__keras_tensor__"


def _positions(entries):
    """Layer name -> position in a model config's `layers` list."""
    positions = {}
    for index, entry in enumerate(entries):
        name = entry.get("name") or entry.get("config", {}).get("name")
        if name is not None:
            positions[name] = index
    return positions


def _tensor_refs(value, positions):
    """A Functional node's arguments with every tensor's layer named by
    its position instead of its name."""
    if isinstance(value, dict):
        if value.get("class_name") == _TENSOR:
            config = dict(value["config"])
            name, node, tensor = config["keras_history"]
            config["keras_history"] = [positions.get(name, name), node, tensor]
            return {**value, "config": config}
        return {k: _tensor_refs(v, positions) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_tensor_refs(v, positions) for v in value]
    return value


def _endpoint_refs(value, positions):
    """A model's `input_layers` or `output_layers` (`[name, node,
    tensor]` triples, nested in lists or dicts) by position."""
    if isinstance(value, dict):
        return {k: _endpoint_refs(v, positions) for k, v in value.items()}
    if (
        isinstance(value, (list, tuple))
        and len(value) == 3
        and isinstance(value[0], str)
        and isinstance(value[1], int)
    ):
        return [positions.get(value[0], value[0]), value[1], value[2]]
    if isinstance(value, (list, tuple)):
        return [_endpoint_refs(v, positions) for v in value]
    return value


def _entry(entry, positions):
    """One layer of a model config, without its name, inputs by position,
    a nested model's config reduced the same way."""
    entry = {k: v for k, v in entry.items() if k != "name"}
    config = entry.get("config")
    if isinstance(config, dict):
        config = {k: v for k, v in config.items() if k != "name"}
        if isinstance(config.get("layers"), list):
            config = canonical_config(config)
        entry["config"] = config
    if "inbound_nodes" in entry:
        entry["inbound_nodes"] = _tensor_refs(entry["inbound_nodes"], positions)
    return entry


def canonical_config(config):
    """A Sequential or Functional model's config with every layer and model
    name left out and every reference to a layer replaced by its position
    in the config's `layers` list.

    Args:
        config: What `model.get_config()` returns.

    Returns:
        A new dict, JSON-serializable as `config` is.
    """
    entries = config.get("layers", [])
    positions = _positions(entries)
    result = {k: v for k, v in config.items() if k not in ("name", "layers")}
    result["layers"] = [_entry(entry, positions) for entry in entries]
    for key in ("input_layers", "output_layers"):
        if key in result:
            result[key] = _endpoint_refs(result[key], positions)
    return result


def network_signature(model):
    """A digest that two models share when they are the same network.

    The same network: the same layers (class and configuration) in the same
    order, wired the same way, with the same weights; layer names aside
    (see the module's docstring for the rule). Two models built by
    `bn_keras.insert_batchnorm` from one model with placements that put
    the same steps between its layers share a signature although their BN
    layers are named differently.

    Args:
        model: A Sequential or Functional `keras.Model`.

    Returns:
        A hexadecimal SHA-256 digest (a string).

    Example:

    >>> base = keras.Sequential([
    ...     keras.Input((4,)),
    ...     keras.layers.Dense(8, activation="relu"),
    ...     keras.layers.Dense(2),
    ... ])
    >>> signature = bn_keras.models._signature.network_signature
    >>> pre = bn_keras.insert_batchnorm(base, placement="bn-act-layer")
    >>> post = bn_keras.insert_batchnorm(base, placement="layer-bn-act")
    >>> [layer.name for layer in pre.layers]
    ['dense', 'dense_1_bn', 'dense_1_act', 'dense_1']
    >>> [layer.name for layer in post.layers]
    ['dense', 'dense_bn', 'dense_act', 'dense_1']
    >>> signature(pre) == signature(post)
    True
    >>> after = bn_keras.insert_batchnorm(base, placement="layer-act-bn")
    >>> signature(after) == signature(post)
    False
    """
    digest = hashlib.sha256()
    architecture = canonical_config(model.get_config())
    digest.update(
        json.dumps(architecture, sort_keys=True, default=repr).encode()
    )
    for weight in model.weights:
        value = np.asarray(weight)
        digest.update(f"{value.dtype}{value.shape}".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()
