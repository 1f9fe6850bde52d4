"""The names of placements, normalizations and tuners, without Keras.

The tables behind `bn_keras.registry` (which re-exports every name here):
the strings that the layers, the model functions, the tuner and the command
line accept, their aliases and the lookups that validate them. It imports
nothing, not even Keras, so that `bn_keras.layers.BNBlock` can resolve a
placement without importing the registry (which builds layers, and so sits
above them) and `bn-keras --help` can list the names without starting
TensorFlow.
"""

from __future__ import annotations

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


def get_placement(placement: str | None) -> str:
    """Returns the canonical name of a placement.

    Args:
        placement: A placement name or alias (case-insensitive), or `None`
            for no batch normalization. See `bn_keras.registry` for the
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
    return lookup(normalization, sorted(NORMALIZATIONS))


def get_conversion_name(normalization: str) -> str:
    """The name of `CONVERSIONS` that `normalization` spells, in lowercase
    (checked without importing Keras); a `ValueError` lists the valid ones.

    Example:

    >>> bn_keras.registry.get_conversion_name(" Keras")
    'keras'
    """
    return lookup(normalization, sorted(CONVERSIONS))


def lookup(value, names, kind="normalization", argument="normalization"):
    """The lowercase name if it is one of `names`, else a `ValueError` that
    lists them, in their order.

    >>> bn_keras._names.lookup(" Grid", ["grid", "random"], "tuner", "name")
    'grid'
    """
    if isinstance(value, str):
        name = value.strip().lower()
        if name in names:
            return name
    raise ValueError(
        f"Unknown {kind}. Valid names: "
        f"{', '.join(repr(n) for n in names)}. "
        f"Received: {argument}={value!r}"
    )


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
    return lookup(
        name,
        input_normalization_names(),
        "input normalization",
        "input_batchnorm",
    )
