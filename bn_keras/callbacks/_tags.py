"""The TensorBoard tag prefix of each batch normalization layer of a model.

The rule, which `BatchNormMonitor` documents: the BN layers are numbered in
forward order (`bn_keras.find_batchnorm`'s order) from 1, zero-padded to
at least two digits (`bn01`, ..., `bn52`), and the names the user gave,
if any, follow after a dash, joined by dots from the outermost container
in: `bn03-block_a.bn`. Names Keras gives automatically (the snake case
name of the layer's class, optionally with `_N`: `batch_normalization_4`,
`sequential_2`) and names derived from them by `insert_batchnorm` and
`BNBlock` (`dense_3_bn`, `input_layer_bn`, `bn_block_1_activation`) are
left out: they count the layers built so far in the process, so two models
of one architecture would otherwise log different tags.
"""

import re

import keras

from bn_keras.models.find_batchnorm import batchnorm_parents

#: Suffixes that `insert_batchnorm` and `BNBlock` append to the name of the
#: layer (or input) a new layer serves.
DERIVED_SUFFIXES = ("bn", "act", "activation")

#: Automatic names of what has no layer object in the model's tree.
_OTHER_AUTOMATIC = ("input_layer", "functional", "sequential")


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


def batchnorm_tags(model):
    """`[(layer, tag prefix)]` for every BN layer of `model`, in forward
    order, by the rule of this module.

    A name is automatic when it is an automatic name of the class of any
    layer in the model (or of an input layer, a Functional or a Sequential
    model), with the suffixes that `insert_batchnorm` and `BNBlock` derive.

    >>> model = keras.Sequential([
    ...     keras.Input((4,)),
    ...     keras.layers.Dense(8),
    ...     keras.layers.BatchNormalization(),
    ...     keras.layers.Dense(8),
    ...     keras.layers.BatchNormalization(name="last_bn"),
    ... ])
    >>> [tag for _, tag in bn_keras.callbacks._tags.batchnorm_tags(model)]
    ['bn01', 'bn02-last_bn']
    """
    found = batchnorm_parents(model)
    bases = set(_OTHER_AUTOMATIC)
    for layer in _all_layers(model):
        bases |= _class_names(layer)
    automatic = automatic_name_pattern(bases)
    width = max(2, len(str(len(found))))
    tags = []
    for index, (layer, parents) in enumerate(found, start=1):
        names = [
            item.name
            for item in (*parents, layer)
            if not automatic.match(item.name)
        ]
        tag = f"bn{index:0{width}d}"
        if names:
            tag += "-" + ".".join(names)
        tags.append((layer, tag))
    return tags
