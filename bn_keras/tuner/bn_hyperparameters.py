"""Declare the batch normalization choices of one block in a search space."""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Sequence
from typing import Any

from bn_keras import registry
from bn_keras._validation import check_keywords
from bn_keras.layers.renorm_clipping import RenormClipping

#: The normalizations searched by default, in the order tried first.
NORMALIZATIONS = ("batch", "ghost", "renorm")

#: The hyperparameter names `bn_hyperparameters` declares, after `"{name}/"`.
PLACEMENT = "placement"
NORMALIZATION = "normalization"
MOMENTUM = "momentum"
VIRTUAL_BATCH_SIZE = "virtual_batch_size"
RMAX = "rmax"
DMAX = "dmax"
WARMUP_STEPS = "warmup_steps"
RAMP_STEPS = "ramp_steps"
#: The hypermodels' hyperparameter that adds BN to the model's inputs: a
#: boolean, or an input normalization name (`"none"`, `"batch"`, ...).
INPUT_BATCHNORM = "input_batchnorm"

# Each number choice: (its type, its minimum, the bound it stays below).
_NUMBER_RULES = {
    MOMENTUM: (float, 0.0, 1.0),
    VIRTUAL_BATCH_SIZE: (int, 1, None),
    RMAX: (float, 1.0, None),
    DMAX: (float, 0.0, None),
    WARMUP_STEPS: (int, 0, None),
    RAMP_STEPS: (int, 0, None),
}

#: The BN settings `bn_hyperparameters` declares, in declaration order.
SETTINGS = tuple(_NUMBER_RULES)

#: The keyword arguments of `bn_hyperparameters` that hypermodels pass on
#: to it, for every block: the settings and `normalization_kwargs`.
CHOICES = (*SETTINGS, "normalization_kwargs")

# The settings declared only for one normalization, in declaration order.
_SETTINGS_OF = {
    "ghost": (VIRTUAL_BATCH_SIZE,),
    "renorm": (RMAX, DMAX, WARMUP_STEPS, RAMP_STEPS),
}


def _as_tuple(value):
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return (value,)


def _unique(values):
    seen = []
    for value in values:
        if value not in seen:
            seen.append(value)
    return tuple(seen)


def _check_nonempty(argument, values, received):
    if not values:
        raise ValueError(
            f"Argument `{argument}` must list at least one value. "
            f"Received: {argument}={received!r}"
        )


def canonical_placements(placements, argument="placements"):
    """Placement names resolved through the registry, duplicates removed."""
    values = _as_tuple(placements)
    _check_nonempty(argument, values, placements)
    canonical = []
    for value in values:
        try:
            canonical.append(registry.get_placement(value))
        except ValueError as error:
            raise ValueError(
                f"Argument `{argument}` must list placement names: {error} "
                f"Received: {argument}={placements!r}"
            ) from None
    return _unique(canonical)


def canonical_normalizations(normalizations, argument="normalizations"):
    """Registered normalization names, lowercase, duplicates removed."""
    values = _as_tuple(normalizations)
    _check_nonempty(argument, values, normalizations)
    try:
        return _unique(registry.get_normalization_name(v) for v in values)
    except ValueError:
        raise ValueError(
            f"Argument `{argument}` must list names among "
            f"{registry.normalization_names()}. "
            f"Received: {argument}={normalizations!r}"
        ) from None


def number_candidates(argument, value, kind, minimum, below=None):
    """Validated candidates: a tuple of floats or ints."""
    values = _as_tuple(value)
    _check_nonempty(argument, values, value)
    checked = []
    for item in values:
        wrong_type = isinstance(item, bool) or not isinstance(
            item, numbers.Integral if kind is int else numbers.Real
        )
        in_range = not wrong_type and item >= minimum
        if in_range and below is not None:
            in_range = item < below
        if wrong_type or not in_range:
            bound = f"in [{minimum}, {below})" if below else f">= {minimum}"
            raise (TypeError if wrong_type else ValueError)(
                f"Argument `{argument}` must be a {kind.__name__} {bound}, or "
                f"a list of them to choose from. Received: {argument}={value!r}"
            )
        checked.append(kind(item))
    return _unique(checked)


def input_batchnorm_candidates(argument, value):
    """Validated candidates of a hypermodel's `input_batchnorm`.

    Booleans only: a tuple of booleans, searched with `hp.Boolean` (`True`
    is the hypermodel's own standardizing BN). Otherwise input
    normalization names among `registry.input_normalization_names()`
    (`"none"`, `"batch"`, `"renorm"`; `False` counts as `"none"` and `True`
    as `"batch"`), lowercase, searched with `hp.Choice`. Duplicates are
    removed.
    """
    values = _as_tuple(value)
    if values and all(isinstance(v, bool) for v in values):
        return _unique(values)
    valid = registry.input_normalization_names()
    names = []
    for item in values:
        if isinstance(item, bool):
            names.append("batch" if item else "none")
        elif isinstance(item, str):
            try:
                names.append(registry.get_input_normalization_name(item))
            except ValueError:
                raise ValueError(
                    f"Argument `{argument}` must list booleans or names among "
                    f"{valid}. Received: {argument}={value!r}"
                ) from None
        else:
            values = ()
            break
    if not values:
        raise TypeError(
            f"Argument `{argument}` must be a boolean, a name among {valid}, "
            f"or a list of them to choose from. Received: {argument}={value!r}"
        )
    return _unique(names)


def check_choices(owner, choices):
    """Checks that `choices` holds only keyword arguments of
    `bn_hyperparameters` that `owner` (a hypermodel) passes on to it."""
    check_keywords(
        type(owner).__name__,
        choices,
        CHOICES,
        takes="the choices it passes on to bn_hyperparameters are",
    )
    return dict(choices)


def declare_choice(hp, name, values):
    """`hp.Fixed` for one candidate, `hp.Choice` for several."""
    if len(values) == 1:
        return hp.Fixed(name, values[0])
    return hp.Choice(name, list(values))


def declare_boolean(hp, name, values):
    """`hp.Boolean` for `(False, True)` (default first), else `hp.Fixed`."""
    if len(values) == 1:
        return hp.Fixed(name, values[0])
    return hp.Boolean(name, default=values[0])


def declare_input_batchnorm(hp, name, values):
    """`declare_boolean` for boolean candidates, else `declare_choice`."""
    if isinstance(values[0], bool):
        return declare_boolean(hp, name, values)
    return declare_choice(hp, name, values)


def scope(hp, parent, active, every):
    """A conditional scope, or none when every parent value activates it."""
    if set(active) == set(every):
        return contextlib.nullcontext()
    return hp.conditional_scope(parent, list(active))


def bn_hyperparameters(
    hp: Any,
    name: str,
    placements: Sequence[str | None] = registry.PLACEMENTS,
    normalizations: Sequence[str] = NORMALIZATIONS,
    momentum: float | Sequence[float] = (0.9, 0.99),
    virtual_batch_size: int | Sequence[int] = (16, 32),
    rmax: float | Sequence[float] = 3.0,
    dmax: float | Sequence[float] = 5.0,
    warmup_steps: int | Sequence[int] = (100, 1000),
    ramp_steps: int | Sequence[int] = 1000,
    normalization_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Declares one block's batch normalization choices in a search space.

    For writing your own `keras_tuner.HyperModel`: call it once per block in
    `build(hp)` and pass what it returns to `bn_keras.layers.BNBlock`. It
    declares, under names that stay the same from one build to the next:

    - `"{name}/placement"`: where BN goes, among `placements` (see
      `bn_keras.registry`; aliases are resolved, so `"none"` is stored as
      `"layer-act"`);
    - `"{name}/normalization"`: which BN, among `normalizations`, and
      `"{name}/momentum"`, both active only when the placement has BN;
    - `"{name}/virtual_batch_size"`: active only for `"ghost"`;
    - `"{name}/rmax"`, `"{name}/dmax"`, `"{name}/warmup_steps"` and
      `"{name}/ramp_steps"`: the renorm schedule
      (`bn_keras.layers.RenormClipping`, which reaches `rmax` and `dmax`
      `ramp_steps` steps after the warm-up), active only for `"renorm"`.

    Every choice argument takes a single value, declared as `hp.Fixed`, or
    a list or tuple of candidates, declared as `hp.Choice` with the first
    candidate as default. Choices that cannot matter are never declared
    (no `"{name}/virtual_batch_size"` when `"ghost"` is not a candidate),
    so narrowing a list shrinks the grid of `keras_tuner.GridSearch`. A
    value already set in `hp` under the same name (`hp.Fixed` before the
    search, or in a test) is used as it is (a placement by its canonical
    name).

    Args:
        hp: The `keras_tuner.HyperParameters` of the trial.
        name: Prefix of the hyperparameter names, e.g. the block's name.
        placements: Placement names or aliases. Defaults to all four,
            `("layer-bn-act", "layer-act-bn", "bn-act-layer",
            "layer-act")`.
        normalizations: Names among `"batch"`, `"ghost"` and `"renorm"`.
            Defaults to all three.
        momentum: Moving-average momentum, in `[0, 1)`. Defaults to
            `(0.9, 0.99)`.
        virtual_batch_size: Ghost batch size, a positive integer. Defaults
            to `(16, 32)`.
        rmax: Final `rmax` of the renorm schedule, at least 1. Defaults to
            `3.0`.
        dmax: Final `dmax` of the renorm schedule, non-negative. Defaults
            to `5.0`.
        warmup_steps: Steps of plain BN before the renorm bounds relax.
            Defaults to `(100, 1000)`.
        ramp_steps: Steps from the end of the warm-up until `rmax` and
            `dmax` reach their final values. Defaults to `1000`.
        normalization_kwargs: Optional dict of further
            `bn_keras.layers.BatchNormalization` arguments for every BN
            layer, not searched, e.g. `{"synchronized": True}` under a
            `tf.distribute` strategy. Defaults to `None`.

    Returns:
        `None` when the block itself is inactive in this trial (its
        `"{name}/placement"` sits in a conditional scope whose condition
        does not hold). Otherwise a dict with the keyword arguments of
        `bn_keras.layers.BNBlock`: `"placement"` (a canonical name) and
        `"normalization"`, `None` for `"layer-act"`, else a dict of
        `BatchNormalization` arguments (also accepted by
        `bn_keras.insert_batchnorm` and `bn_keras.registry.get_normalization`).

    Example:

    >>> hp = keras_tuner.HyperParameters()
    >>> hp.Fixed("block_0/placement", "layer-bn-act")
    'layer-bn-act'
    >>> hp.Fixed("block_0/normalization", "ghost")
    'ghost'
    >>> kwargs = bn_keras.tuner.bn_hyperparameters(hp, "block_0")
    >>> kwargs["placement"], kwargs["normalization"]["virtual_batch_size"]
    ('layer-bn-act', 16)
    >>> block = bn_keras.layers.BNBlock(
    ...     keras.layers.Dense(8), activation="relu", **kwargs)
    >>> for name in sorted(hp.values):
    ...     print(name)
    block_0/momentum
    block_0/normalization
    block_0/placement
    block_0/virtual_batch_size
    """
    _check_name(name)
    placements = canonical_placements(placements)
    normalizations = canonical_normalizations(normalizations)
    values = (
        momentum,
        virtual_batch_size,
        rmax,
        dmax,
        warmup_steps,
        ramp_steps,
    )
    # One candidate tuple per setting, checked in the order of SETTINGS.
    candidates = {
        key: number_candidates(key, value, *_NUMBER_RULES[key])
        for key, value in zip(SETTINGS, values)
    }
    normalization_kwargs = _check_normalization_kwargs(normalization_kwargs)

    placement = declare_choice(hp, f"{name}/{PLACEMENT}", placements)
    with_bn = tuple(p for p in placements if registry.has_batchnorm(p))
    normalization, settings = None, {}
    if with_bn:
        with scope(hp, f"{name}/{PLACEMENT}", with_bn, placements):
            normalization, settings = _declare_settings(
                hp, name, normalizations, candidates
            )
    if placement is None:
        return None
    _check_canonical(name, placement)
    if not registry.has_batchnorm(placement):
        return {"placement": placement, "normalization": None}
    return {
        "placement": placement,
        "normalization": _normalization(
            normalization or normalizations[0], settings, normalization_kwargs
        ),
    }


def _check_name(name):
    if not isinstance(name, str) or not name:
        raise ValueError(
            "Argument `name` must be a non-empty string (the prefix of the "
            f"hyperparameter names). Received: name={name!r}"
        )


def _check_normalization_kwargs(normalization_kwargs):
    """A dict of `BatchNormalization` arguments, empty for `None`."""
    if normalization_kwargs is None:
        return {}
    if not isinstance(normalization_kwargs, dict):
        raise TypeError(
            "Argument `normalization_kwargs` must be None or a dict of "
            "BatchNormalization arguments. "
            f"Received: normalization_kwargs={normalization_kwargs!r}"
        )
    return normalization_kwargs


def _declare_settings(hp, name, normalizations, candidates):
    """Declares the normalization and its settings, each under its scope;
    returns the normalization and a dict of the settings' values."""
    parent = f"{name}/{NORMALIZATION}"
    normalization = declare_choice(hp, parent, normalizations)
    settings = {
        MOMENTUM: declare_choice(
            hp, f"{name}/{MOMENTUM}", candidates[MOMENTUM]
        )
    }
    for kind, keys in _SETTINGS_OF.items():
        if kind not in normalizations:
            continue
        with scope(hp, parent, [kind], normalizations):
            for key in keys:
                settings[key] = declare_choice(
                    hp, f"{name}/{key}", candidates[key]
                )
    return normalization, settings


def _check_canonical(name, placement):
    """The conditions hold canonical names: an alias set in `hp` would
    silently switch off the normalization's choices."""
    if placement not in registry.PLACEMENTS:
        raise ValueError(
            f"The value of hyperparameter `{name}/{PLACEMENT}` must be one of "
            f"the canonical placement names {list(registry.PLACEMENTS)}; "
            "set it with one of them. "
            f"Received: {name}/{PLACEMENT}={placement!r}"
        )


def _normalization(kind, settings, extra):
    """The dict of `BatchNormalization` arguments for one choice."""
    kind = registry.get_normalization_name(kind)
    config = dict(extra)
    if settings.get(MOMENTUM) is not None:
        config["momentum"] = settings[MOMENTUM]
    if kind == "ghost":
        config["virtual_batch_size"] = settings.get(VIRTUAL_BATCH_SIZE) or 32
    elif kind == "renorm":
        clipping = {}
        for key in (RMAX, DMAX, WARMUP_STEPS):
            if settings.get(key) is not None:
                clipping[key] = settings[key]
        if settings.get(RAMP_STEPS) is not None:
            # The ramps start where the warm-up ends (RenormClipping's
            # default warm-up where none was chosen).
            warmup = clipping.get(WARMUP_STEPS, RenormClipping().warmup_steps)
            end = warmup + settings[RAMP_STEPS]
            clipping.update(rmax_steps=end, dmax_steps=end)
        config["renorm"] = True
        config["renorm_clipping"] = RenormClipping(**clipping)
    return config
