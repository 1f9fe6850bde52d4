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

`bn_keras.convert_batchnorm` also converts to `"keras"`, Keras's own
`keras.layers.BatchNormalization`, for models shipped without bn-keras
(`CONVERSIONS`, `get_conversion_class`).

Input normalizations (`bn_keras.insert_batchnorm(input_batchnorm=...)`,
the hypermodels and `bn-keras compare --input-batchnorm`): a
`bn_keras.layers.BatchNormalization` without `gamma` and `beta` on each
input, in place of standardizing the data by hand:

| name       | layer                                                        |
| ---------- | ------------------------------------------------------------ |
| `"none"`   | no layer                                                     |
| `"batch"`  | plain BN: each training batch standardized by its own        |
|            | statistics                                                   |
| `"renorm"` | unclipped renorm with cumulative statistics (`momentum=None`,|
|            | `renorm_momentum=None`): each training batch standardized by |
|            | the statistics of all the batches before it                  |

`normalization_for_run` builds these for a training run of known length
(the ghost batch size, the momentum, and the renorm schedule scaled to the
run by `bn_keras.layers.RenormClipping.scaled`); `placement_table` and
`valid_placement_names` render the placement names for help texts and
error messages.

Example:

>>> bn_keras.registry.get_placement("before_activation")
'layer-bn-act'
>>> bn_keras.registry.placement_order("pre_activation")
('bn', 'act', 'layer')
>>> layer = bn_keras.registry.get_normalization("ghost")
>>> type(layer).__name__, layer.virtual_batch_size
('GhostBatchNormalization', 32)
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from typing import Any

if TYPE_CHECKING:
    import keras

    from bn_keras._typing import Normalization

# Keras and the layers are imported by the functions that build layers, on
# first use: the names cost nothing to import, so that `bn-keras --help`
# lists them without starting Keras and TensorFlow.

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

#: Input normalization names and the arguments of the
#: `BatchNormalization` each one puts on an input (`None`: no layer).
INPUT_NORMALIZATIONS = {
    "none": None,
    "batch": {},
    "renorm": {"renorm": True, "momentum": None, "renorm_momentum": None},
}

#: Normalization names and the `bn_keras.layers` class each one builds.
NORMALIZATIONS = {
    "batch": "BatchNormalization",
    "ghost": "GhostBatchNormalization",
    "renorm": "BatchRenormalization",
}


#: What `bn_keras.convert_batchnorm` converts BN layers to: the
#: normalizations above, and `"keras"`, Keras's own layer.
CONVERSIONS = {**NORMALIZATIONS, "keras": "keras.layers.BatchNormalization"}


def _layer_class(name):
    """The `bn_keras.layers` class of a registered normalization name."""
    from bn_keras import layers

    return getattr(layers, NORMALIZATIONS[name])


def get_placement(placement: str | None) -> str:
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
        f"Unknown placement. Valid placements: {valid_placement_names()}. "
        f"Received: placement={placement!r}"
    )


def placement_order(placement: str | None) -> tuple[str, ...]:
    """The order of operations of a placement, as a tuple of steps.

    Args:
        placement: A placement name or alias, or `None`.

    Returns:
        A tuple of `"layer"`, `"bn"` and `"act"`, in forward order, e.g.
        `("layer", "bn", "act")` for `"layer-bn-act"`; `"bn"` is absent for
        `"layer-act"`.
    """
    return tuple(get_placement(placement).split("-"))


def has_batchnorm(placement: str | None) -> bool:
    """Whether a placement includes batch normalization."""
    return "bn" in placement_order(placement)


#: How each step of a placement's order reads in `placement_table`.
_STEP_WORDS = {"layer": "layer", "bn": "BN", "act": "activation"}


def placement_aliases(placement: str) -> list[str]:
    """The other names of a placement, in the order of `PLACEMENT_ALIASES`.

    Example:

    >>> bn_keras.registry.placement_aliases("layer-act")
    ['none']
    """
    name = get_placement(placement)
    return [
        alias
        for alias, canonical in PLACEMENT_ALIASES.items()
        if canonical == name and alias != name
    ]


def valid_placement_names(quoted: bool = True) -> str:
    """The placement names with their aliases, as one line for messages.

    Args:
        quoted: `True` for Python callers: names as `repr`s, and `None`
            among the aliases of `"layer-act"`; `False` for the command
            line: bare names, as they are typed.

    Example:

    >>> bn_keras.registry.valid_placement_names().split(", ")[-1]
    "'layer-act' (or 'none' or None)"
    >>> bn_keras.registry.valid_placement_names(quoted=False).split(", ")[0]
    'layer-bn-act (or before_activation)'
    """
    entries = []
    for name in PLACEMENTS:
        aliases = placement_aliases(name)
        if quoted:
            aliases = [repr(a) for a in aliases]
            if not has_batchnorm(name):
                aliases.append("None")
            name = repr(name)
        entries.append(f"{name} (or {' or '.join(aliases)})")
    return ", ".join(entries)


def placement_table(indent: int = 2, width: int = 34) -> str:
    """The placements as lines of text for a `--help`: names and order.

    Args:
        indent: Spaces before each line. Defaults to `2`.
        width: Width of the names column (name and aliases). Defaults to
            `34`.

    Example:

    >>> print(bn_keras.registry.placement_table())
      layer-bn-act (before_activation)   layer, BN, activation
      layer-act-bn (after_activation)    layer, activation, BN
      bn-act-layer (pre_activation)      BN, activation, layer
      layer-act (none)                   layer, activation (no BN)
    """
    lines = []
    for name in PLACEMENTS:
        label = f"{name} ({', '.join(placement_aliases(name))})"
        order = ", ".join(_STEP_WORDS[step] for step in placement_order(name))
        if not has_batchnorm(name):
            order += " (no BN)"
        lines.append(f"{' ' * indent}{label:<{width}} {order}")
    return "\n".join(lines)


def normalization_names() -> list[str]:
    """The registered normalization names, sorted."""
    return sorted(NORMALIZATIONS)


def get_normalization_name(normalization: str) -> str:
    """Returns the registered name of a normalization.

    The one check of normalization names: every module that takes one
    (`get_normalization`, the tuner, the command line) validates it here.

    Args:
        normalization: A registered name, `"batch"`, `"ghost"` or
            `"renorm"` (case-insensitive, surrounding spaces ignored).

    Returns:
        The name in lowercase.

    Raises:
        ValueError: for anything else; the message lists the valid names.

    Example:

    >>> bn_keras.registry.get_normalization_name(" Ghost")
    'ghost'
    """
    return _lookup(normalization, sorted(NORMALIZATIONS))


def get_conversion_name(normalization: str) -> str:
    """The name of `CONVERSIONS` that `normalization` spells, in lowercase
    (checked without importing Keras); a `ValueError` lists the valid ones.

    Example:

    >>> bn_keras.registry.get_conversion_name(" Keras")
    'keras'
    """
    return _lookup(normalization, sorted(CONVERSIONS))


def get_conversion_class(
    normalization: str,
) -> type[keras.layers.BatchNormalization]:
    """The layer class that `bn_keras.convert_batchnorm` converts to.

    Args:
        normalization: A name of `CONVERSIONS` (case-insensitive): a
            normalization name, or `"keras"` for
            `keras.layers.BatchNormalization`.

    Returns:
        A `keras.layers.BatchNormalization` class (or subclass).

    Raises:
        ValueError: for anything else; the message lists the valid names.

    Example:

    >>> cls = bn_keras.registry.get_conversion_class("Keras")
    >>> cls is keras.layers.BatchNormalization
    True
    >>> bn_keras.registry.get_conversion_class("renorm").__name__
    'BatchRenormalization'
    """
    name = get_conversion_name(normalization)
    if name == "keras":
        import keras

        return keras.layers.BatchNormalization
    return _layer_class(name)


def _lookup(value, names, kind="normalization", argument="normalization"):
    """The lowercase name if it is one of `names`, else a `ValueError` that
    lists them, in their order."""
    if isinstance(value, str):
        name = value.strip().lower()
        if name in names:
            return name
    raise ValueError(
        f"Unknown {kind}. Valid names: "
        f"{', '.join(repr(n) for n in names)}. "
        f"Received: {argument}={value!r}"
    )


def normalization_for_run(
    normalization: str,
    momentum: float | None = 0.99,
    ghost_batch_size: int | None = None,
    total_steps: int | None = None,
) -> keras.layers.Layer | None:
    """Returns a fresh normalization layer set up for one training run.

    What `bn-keras compare` trains with, for a name of the table above:

    - `"batch"`: `BatchNormalization(momentum=momentum)`;
    - `"ghost"`: `GhostBatchNormalization(virtual_batch_size=
      ghost_batch_size, momentum=momentum)`;
    - `"renorm"`: `BatchRenormalization(momentum=momentum,
      renorm_momentum=momentum, renorm_clipping=schedule)`, where the
      schedule is the paper's (`bn_keras.layers.RenormClipping()`) scaled
      to the run with `RenormClipping.scaled(total_steps)`.

    Args:
        normalization: A registered name (case-insensitive).
        momentum: Momentum of the moving statistics (and, for `"renorm"`,
            of the renorm statistics). Defaults to `0.99`.
        ghost_batch_size: The ghost batch size of `"ghost"`; the other
            normalizations have none. Defaults to `None`: the layer's
            default, 32.
        total_steps: The run's number of training steps, to which the
            renorm schedule is scaled; the other normalizations have no
            schedule. Defaults to `None`: the paper's schedule as it is.

    Returns:
        A new, unbuilt layer.

    Raises:
        ValueError: for an unknown name or an invalid setting.

    Example:

    >>> layer = bn_keras.registry.normalization_for_run(
    ...     "renorm", momentum=0.9, total_steps=800)
    >>> layer.renorm_momentum, layer.renorm_clipping.rmax_steps
    (0.9, 800)
    """
    from bn_keras import layers

    name = get_normalization_name(normalization)
    if name == "ghost" and ghost_batch_size is not None:
        return layers.GhostBatchNormalization(
            virtual_batch_size=ghost_batch_size, momentum=momentum
        )
    if name == "renorm":
        schedule = layers.RenormClipping()
        if total_steps is not None:
            schedule = schedule.scaled(total_steps)
        return layers.BatchRenormalization(
            renorm_clipping=schedule,
            momentum=momentum,
            renorm_momentum=momentum,
        )
    return _layer_class(name)(momentum=momentum)


def get_normalization(
    normalization: Normalization = None, **defaults: Any
) -> keras.layers.Layer | None:
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
    import keras

    from bn_keras.layers import BatchNormalization

    if normalization is None:
        return BatchNormalization(**defaults)
    if isinstance(normalization, str):
        return _layer_class(get_normalization_name(normalization))(**defaults)
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


def serialize_normalization(
    layer: keras.layers.Layer | None,
) -> dict[str, Any] | None:
    """The JSON-serializable form of a normalization layer (or `None`)."""
    import keras

    if layer is None:
        return None
    return keras.saving.serialize_keras_object(layer)


def input_normalization_names() -> list[str]:
    """The input normalization names, in the order of the table."""
    return list(INPUT_NORMALIZATIONS)


def get_input_normalization_name(name: str | bool | None) -> str:
    """Returns the registered name of an input normalization, lowercase.

    `name` is `"none"`, `"batch"` or `"renorm"`, case-insensitive, with
    surrounding spaces ignored; anything else raises a `ValueError` that
    lists the valid names (as `get_normalization_name` does).

    >>> bn_keras.registry.get_input_normalization_name("ReNorm")
    'renorm'
    """
    return _lookup(
        name,
        input_normalization_names(),
        "input normalization",
        "input_batchnorm",
    )


def get_input_normalization(
    normalization: str | bool | None, **defaults: Any
) -> keras.layers.Layer | None:
    """Returns a fresh input normalization layer for a name, or `None`.

    Args:
        normalization: A registered input normalization name (see the
            module docstring), case-insensitive.
        **defaults: Further `BatchNormalization` arguments, such as `name`
            or `axis`.

    Returns:
        A new, unbuilt `bn_keras.layers.BatchNormalization` with
        `center=False` and `scale=False`, or `None` for `"none"`.

    Example:

    >>> layer = bn_keras.registry.get_input_normalization("renorm")
    >>> layer.renorm, layer.momentum, layer.renorm_momentum, layer.center
    (True, None, None, False)
    """
    from bn_keras.layers import BatchNormalization

    name = get_input_normalization_name(normalization)
    arguments = INPUT_NORMALIZATIONS[name]
    if arguments is None:
        return None
    return BatchNormalization(
        **{"center": False, "scale": False, **defaults, **arguments}
    )
