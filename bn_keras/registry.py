"""Names for batch normalization placements and variants.

The one place where bn-keras turns a string into a choice, in the style of
`keras.initializers.get()`: `bn_keras.layers.BNBlock`,
`bn_keras.insert_batchnorm`, the tuner and the command line all resolve
their `placement` and `normalization` arguments here, so every name means
the same thing everywhere.

Placements (the order of the wrapped layer, batch normalization and the
activation):

| name             | aliases                 | order                    |
| ---------------- | ----------------------- | ------------------------ |
| `"layer-bn-act"` | `"before_activation"`   | layer, BN, activation    |
| `"layer-act-bn"` | `"after_activation"`    | layer, activation, BN    |
| `"bn-act-layer"` | `"pre_activation"`      | BN, activation, layer    |
| `"layer-act"`    | `"none"`, `None`        | layer, activation (no BN)|

Normalizations:

| name       | layer                                         |
| ---------- | --------------------------------------------- |
| `"batch"`  | `bn_keras.layers.BatchNormalization`          |
| `"ghost"`  | `bn_keras.layers.GhostBatchNormalization`     |
| `"renorm"` | `bn_keras.layers.BatchRenormalization`        |

Example:

>>> bn_keras.registry.get_placement("before_activation")
'layer-bn-act'
>>> bn_keras.registry.placement_order("pre_activation")
('bn', 'act', 'layer')
>>> layer = bn_keras.registry.get_normalization("ghost")
>>> type(layer).__name__, layer.virtual_batch_size
('GhostBatchNormalization', 32)
"""

import keras

from bn_keras.layers.batch_normalization import BatchNormalization
from bn_keras.layers.batch_renormalization import BatchRenormalization
from bn_keras.layers.ghost_batch_normalization import GhostBatchNormalization

#: Canonical placement names; each spells its order of operations.
PLACEMENTS = ("layer-bn-act", "layer-act-bn", "bn-act-layer", "layer-act")

#: Every accepted placement name (lowercase), canonical names included.
PLACEMENT_ALIASES = {
    "layer-bn-act": "layer-bn-act",
    "before_activation": "layer-bn-act",
    "layer-act-bn": "layer-act-bn",
    "after_activation": "layer-act-bn",
    "bn-act-layer": "bn-act-layer",
    "pre_activation": "bn-act-layer",
    "layer-act": "layer-act",
    "none": "layer-act",
}

#: Tuner names that `bn_keras.tuner.get_tuner` knows.
TUNERS = ("random", "grid", "hyperband", "bayesian")

#: Normalization names and the layer class each one builds.
NORMALIZATIONS = {
    "batch": BatchNormalization,
    "ghost": GhostBatchNormalization,
    "renorm": BatchRenormalization,
}


def _valid_placements():
    aliases = {name: [] for name in PLACEMENTS}
    for alias, name in PLACEMENT_ALIASES.items():
        if alias != name:
            aliases[name].append(alias)
    aliases["layer-act"].append(None)
    return ", ".join(
        f"{name!r} (or {' or '.join(repr(a) for a in aliases[name])})"
        for name in PLACEMENTS
    )


def get_placement(placement):
    """Returns the canonical name of a placement.

    Args:
        placement: A placement name or alias (case-insensitive), or `None`
            for no batch normalization. See the module docstring for the
            table of names.

    Returns:
        One of `"layer-bn-act"`, `"layer-act-bn"`, `"bn-act-layer"` and
        `"layer-act"`.

    Raises:
        ValueError: for an unknown name; the message lists the valid ones.

    Example:

    >>> bn_keras.registry.get_placement(None)
    'layer-act'
    """
    if placement is None:
        return "layer-act"
    if isinstance(placement, str):
        name = PLACEMENT_ALIASES.get(placement.strip().lower())
        if name is not None:
            return name
    raise ValueError(
        f"Unknown placement. Valid placements: {_valid_placements()}. "
        f"Received: placement={placement!r}"
    )


def placement_order(placement):
    """The order of operations of a placement, as a tuple of steps.

    Args:
        placement: A placement name or alias, or `None`.

    Returns:
        A tuple of `"layer"`, `"bn"` and `"act"`, in forward order, e.g.
        `("layer", "bn", "act")` for `"layer-bn-act"`; `"bn"` is absent for
        `"layer-act"`.
    """
    return tuple(get_placement(placement).split("-"))


def has_batchnorm(placement):
    """Whether a placement includes batch normalization."""
    return "bn" in placement_order(placement)


def normalization_names():
    """The registered normalization names, sorted."""
    return sorted(NORMALIZATIONS)


def get_normalization(normalization=None, **defaults):
    """Returns a fresh normalization layer for a specification.

    Args:
        normalization: One of:
            - `None`: `bn_keras.layers.BatchNormalization()` with its
              defaults;
            - a registered name, `"batch"`, `"ghost"` or `"renorm"`
              (case-insensitive);
            - a dict of `bn_keras.layers.BatchNormalization` arguments, such
              as `{"virtual_batch_size": 16, "momentum": 0.9}`;
            - a serialized layer (a dict with `"class_name"` and `"config"`,
              as `keras.saving.serialize_keras_object` returns it);
            - a layer instance, used as a template: the result is a new
              layer of the same class built from its config (no weights are
              shared), so one instance can configure many blocks.
        **defaults: Arguments used where the specification does not set
            them, e.g. `axis=1` for channels-first data or a `name` (a
            template sets every argument but its name; a serialized layer
            is used as it is).

    Returns:
        A new, unbuilt `keras.layers.Layer` (a
        `keras.layers.BatchNormalization` subclass unless a template of
        another class was given).

    Raises:
        ValueError: for an unknown name; the message lists the valid ones.
        TypeError: for any other kind of value.

    Example:

    >>> layer = bn_keras.registry.get_normalization({"momentum": 0.9}, axis=1)
    >>> layer.momentum, layer.axis
    (0.9, 1)
    """
    if normalization is None:
        return BatchNormalization(**defaults)
    if isinstance(normalization, str):
        cls = NORMALIZATIONS.get(normalization.strip().lower())
        if cls is None:
            raise ValueError(
                "Unknown normalization. Valid names: "
                f"{', '.join(repr(n) for n in normalization_names())} (or "
                "None, a dict of BatchNormalization arguments, or a layer). "
                f"Received: normalization={normalization!r}"
            )
        return cls(**defaults)
    if isinstance(normalization, dict):
        if "class_name" in normalization:
            layer = keras.saving.deserialize_keras_object(normalization)
            if not isinstance(layer, keras.layers.Layer):
                raise TypeError(
                    "A serialized `normalization` must describe a layer. "
                    f"Received: normalization={normalization!r}"
                )
            return layer
        return BatchNormalization(**{**defaults, **normalization})
    if isinstance(normalization, keras.layers.Layer):
        config = normalization.get_config()
        config.pop("name", None)  # a fresh layer gets a fresh name
        return type(normalization).from_config({**defaults, **config})
    raise TypeError(
        "Argument `normalization` must be None, one of "
        f"{normalization_names()}, a dict of BatchNormalization arguments, "
        f"or a layer instance. Received: normalization={normalization!r}"
    )


def serialize_normalization(layer):
    """The JSON-serializable form of a normalization layer (or `None`)."""
    if layer is None:
        return None
    return keras.saving.serialize_keras_object(layer)
