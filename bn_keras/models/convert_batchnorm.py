"""Replace the batch normalization layers of a model by another kind."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import keras

from bn_keras import registry
from bn_keras._statistics import set_statistics
from bn_keras._statistics import to_numpy
from bn_keras._statistics import weight_values
from bn_keras._typing import LayerSelection
from bn_keras._typing import Normalization
from bn_keras.layers.batch_normalization import BatchNormalization
from bn_keras.layers.bn_block import BNBlock
from bn_keras.models._graph import Replacement
from bn_keras.models._graph import check_layer_names
from bn_keras.models._graph import copied
from bn_keras.models._graph import copy_layer
from bn_keras.models._graph import model_kind
from bn_keras.models._graph import rewrite
from bn_keras.models.find_batchnorm import find_batchnorm

logger = logging.getLogger("bn_keras")

#: Arguments a converted layer always takes from the layer it replaces:
#: they say what its weights are and what it computes in inference.
_KEPT = ("name", "trainable", "dtype", "axis", "epsilon", "center", "scale")
#: Of those, the ones `**overrides` cannot change (the weights would not fit).
_FIXED = ("name", "axis", "center", "scale")
#: The momentum a layer with cumulative statistics (`momentum=None`) gets
#: when converted to Keras's layer, which has none: Keras's default.
_KERAS_DEFAULT_MOMENTUM = 0.99
#: Arguments taken from the layer it replaces unless the specification
#: sets them: how `gamma` and `beta` are trained, and the momentum.
_CARRIED = (
    "momentum",
    "beta_initializer",
    "gamma_initializer",
    "moving_mean_initializer",
    "moving_variance_initializer",
    "beta_regularizer",
    "gamma_regularizer",
    "beta_constraint",
    "gamma_constraint",
    "synchronized",
)


class _Target:
    """What each selected BN layer becomes: a class and its arguments.

    `config(bn)` is the new layer's config: the old layer's `_CARRIED`
    arguments, then the specification's, then the old layer's `_KEPT`
    ones, then `overrides`.
    """

    def __init__(self, normalization, overrides):
        self.cls, self.spec = _resolve(normalization)
        fixed = sorted(set(overrides) & set(_FIXED))
        if fixed:
            raise ValueError(
                "`convert_batchnorm` keeps the `name`, `axis`, `center` and "
                "`scale` of each layer it converts (its weights depend on "
                "them), so they cannot be overridden. "
                f"Received: {', '.join(f'{k}={overrides[k]!r}' for k in fixed)}"
            )
        self.overrides = dict(overrides)
        # A bad argument fails here, before the model is copied (named, so
        # that no auto-generated layer name is used up).
        self.cls(**{**self.spec, **self.overrides, "name": "check"})

    def config(self, bn):
        source = bn.get_config()
        config = {k: source[k] for k in _CARRIED if k in source}
        config.update(self.spec)
        config.update({k: source[k] for k in _KEPT if k in source})
        config.update(self.overrides)
        if config.get("momentum", 0.99) is None and not issubclass(
            self.cls, BatchNormalization
        ):
            # Keras's layer has no cumulative statistics: its default.
            config["momentum"] = _KERAS_DEFAULT_MOMENTUM
        return config

    def convert(self, bn):
        """A new layer for `bn`, built and holding its weights if it is."""
        new = self.cls.from_config(self.config(bn))
        if bn.built:
            new.build_from_config(bn.get_build_config())
            _carry_weights(bn, new)
        return new


def _resolve(normalization):
    """`(layer class, arguments the specification sets)`."""
    if isinstance(normalization, str):
        return registry.get_conversion_class(normalization), {}
    if isinstance(normalization, dict) and "class_name" not in normalization:
        return BatchNormalization, dict(normalization)
    if isinstance(normalization, (dict, keras.layers.Layer)):
        template = registry.get_normalization(normalization)
        if isinstance(template, keras.layers.BatchNormalization):
            config = template.get_config()
            return type(template), {
                k: v for k, v in config.items() if k not in _KEPT
            }
    raise TypeError(
        "Argument `normalization` must be one of "
        f"{sorted(registry.CONVERSIONS)}, a dict of "
        "`bn_keras.layers.BatchNormalization` arguments, or a batch "
        "normalization layer (or its serialized form) used as a template. "
        f"Received: normalization={normalization!r}"
    )


def _carry_weights(old, new):
    """Sets `new`'s weights from `old`'s, matched by name.

    Renorm's own weights, when `old` has none, start from the moving
    statistics (`renorm_mean = moving_mean`, `renorm_stddev =
    moving_stddev = sqrt(moving_variance + epsilon)`): renorm's correction
    then starts at the identity and inference is unchanged. Weights of
    `new` that `old` has no value for (a renorm step counter) keep their
    initial values.
    """
    values = {v.name: to_numpy(v) for v in old.weights}
    if new.renorm and "renorm_mean" not in values:
        set_statistics(new, values["moving_mean"], values["moving_variance"])
    for variable in new.weights:
        if variable.name in values:
            variable.assign(values[variable.name].astype(variable.dtype))


class _Conversion:
    """`convert_batchnorm` applied to a model and its sub-models."""

    def __init__(self, target, selected):
        self.target = target
        self.selected = selected  # ids of the BN layers to convert
        self.converted = []  # (path, old layer, new layer)

    def make_replace(self, model, graph, path):
        """`replace(layer)` for one model of the rewrite (see `rewrite`)."""

        def replace(layer):
            name = path + layer.name
            if id(layer) in self.selected:
                return Replacement(self._convert(layer, name))
            if isinstance(layer, keras.Model):
                return None  # rewritten the same way
            if isinstance(layer, BNBlock) and (
                id(layer.normalization) in self.selected
            ):
                return Replacement(self._block(layer, name + "/"))
            self._check_unreached(layer, name)
            return copied(layer)

        return replace

    def _convert(self, bn, path):
        new = self.target.convert(bn)
        self.converted.append((path, bn, new))
        return new

    def _block(self, block, prefix):
        """A copy of a `BNBlock` with its normalization converted."""
        bn = block.normalization
        new_bn = self._convert(bn, prefix + bn.name)
        config = keras.saving.serialize_keras_object(new_bn)
        new = copy_layer(block, normalization=config)
        if block.built:
            new.build_from_config(block.get_build_config())
            new.layer.set_weights(weight_values(block.layer))
            _carry_weights(bn, new.normalization)
        return new

    def _check_unreached(self, layer, path):
        """A selected BN inside a layer that cannot be rewritten raises."""
        inside = [bn for bn in find_batchnorm(layer) if id(bn) in self.selected]
        if inside:
            raise TypeError(
                f"Cannot convert the batch normalization layer "
                f"'{inside[0].name}' inside '{path}' "
                f"({type(layer).__name__}): `convert_batchnorm` replaces BN "
                "layers of a Sequential or Functional model, of its "
                "sub-models and of `bn_keras.layers.BNBlock`s only. Leave "
                "it out with `layers=`, or rebuild that layer yourself. "
                f"Received: layer={path}"
            )


def _selected(model, layers):
    """The ids of the BN layers that `layers` selects."""
    found = find_batchnorm(model)
    known = [bn.name for bn in found]
    names = check_layer_names(
        layers,
        known=known,
        listed=known,
        what="batch normalization layer",
        label="BN layers",
    )
    return {id(bn) for bn in found if names is None or bn.name in names}


def convert_batchnorm(
    model: keras.Model,
    normalization: Normalization,
    layers: LayerSelection = None,
    **overrides: Any,
) -> keras.Model:
    """Returns a copy of `model` with its BN layers replaced by another kind.

    Each selected batch normalization layer (Keras's or bn-keras's, in the
    model, in its sub-models and in `bn_keras.layers.BNBlock`s) is replaced
    by a new layer of the kind `normalization` names, with the same name,
    `axis`, `epsilon`, `center`, `scale`, `dtype` and `trainable`, and its
    weights: `gamma`, `beta` and the moving statistics carry over as they
    are, so the new model's inference predictions equal the old one's. The
    new layer keeps the old one's momentum, initializers, regularizers,
    constraints and `synchronized` unless the specification sets them;
    other settings (ghost batches, renorm) are the specification's. Every
    other layer is copied with its weights; the original model is left
    unchanged. A compiled model's copy is compiled with the same
    configuration (and a fresh optimizer).

    This is how a trained model changes its BN for what comes next:
    `"renorm"` to fine-tune with small batches, `"ghost"` for ghost
    batches, `{"synchronized": True}` for synchronized BN across replicas,
    `"keras"` to ship a model that loads without bn-keras.

    - A renorm layer's own weights start from the moving statistics:
      `renorm_mean = moving_mean`, `renorm_stddev = moving_stddev =
      sqrt(moving_variance + epsilon)`, so renorm's correction starts at
      the identity (and its schedule, if any, at step 0).
    - `"keras"` converts to `keras.layers.BatchNormalization`, which has no
      ghost batches, no renorm schedule and no cumulative statistics: the
      new layers are plain batch normalization (`renorm=True` is dropped
      too, as with `"batch"`), and `momentum=None` becomes Keras's `0.99`.
      One warning names what was dropped from which layers (the weights,
      and inference, are kept).

    Args:
        model: A Sequential or Functional `keras.Model` (a subclassed model
            raises a `TypeError`).
        normalization: What the BN layers become: `"batch"`, `"ghost"`,
            `"renorm"` (bn-keras's layers, see `bn_keras.registry`),
            `"keras"` (`keras.layers.BatchNormalization`), a dict of
            `bn_keras.layers.BatchNormalization` arguments (such as
            `{"virtual_batch_size": 16}`), or a BN layer (or a serialized
            one) used as a template: its class and its arguments, except
            those kept from each converted layer.
        layers: `None` to convert every BN layer, or a name or list of names
            of BN layers (nested ones included). Defaults to `None`.
        **overrides: Arguments of the new layers that win over everything
            else, e.g. `renorm_clipping=...`, `momentum=0.9` or
            `epsilon=1e-5` (which changes the inference output). `name`,
            `axis`, `center` and `scale` cannot be overridden.

    Returns:
        The new model, of the same kind.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((4,)),
    ...     keras.layers.Dense(8, name="dense"),
    ...     keras.layers.BatchNormalization(name="bn"),
    ... ])
    >>> new = bn_keras.convert_batchnorm(model, "renorm")
    >>> type(new.get_layer("bn")).__name__
    'BatchRenormalization'
    >>> x = np.ones((2, 4), "float32")
    >>> bool(np.allclose(model(x), new(x), atol=1e-5))
    True
    """
    model_kind(model, "convert_batchnorm")  # the model is checked first
    target = _Target(normalization, overrides)
    conversion = _Conversion(target, _selected(model, layers))
    new_model = rewrite(model, "convert_batchnorm", conversion.make_replace)
    for path, old, new in conversion.converted:
        logger.info(
            "convert_batchnorm: '%s' %s -> %s.",
            path,
            type(old).__name__,
            type(new).__name__,
        )
    _warn_dropped(target.cls, conversion.converted)
    return new_model


def _warn_dropped(cls, converted):
    """One warning for the ghost and renorm settings that a conversion to
    a class without them (Keras's own) dropped."""
    if issubclass(cls, BatchNormalization):
        return  # bn-keras's layers can express every setting
    dropped = {}  # setting -> paths of the layers that had it
    for path, old, new in converted:
        size = getattr(old, "virtual_batch_size", None)
        if size:
            dropped.setdefault(f"virtual_batch_size={size}", []).append(path)
        if old.renorm and not new.renorm:
            dropped.setdefault("renorm=True", []).append(path)
        if getattr(old, "momentum", None) is None:
            setting = f"momentum=None (now {_KERAS_DEFAULT_MOMENTUM})"
            dropped.setdefault(setting, []).append(path)
    if not dropped:
        return
    name = (
        "keras.layers.BatchNormalization"
        if cls is keras.layers.BatchNormalization
        else cls.__name__
    )
    parts = [
        f"{setting} from {_some(paths)}" for setting, paths in dropped.items()
    ]
    warnings.warn(
        f"convert_batchnorm: {name} has no ghost batches and no renorm "
        f"schedule; dropped {' and '.join(parts)}. Their weights are kept: "
        "inference is unchanged.",
        stacklevel=3,
    )


def _some(paths, shown=3):
    """`'a'`, or `3 layers ('a', 'b', 'c')`, or `9 layers ('a', ...)`."""
    if len(paths) == 1:
        return f"'{paths[0]}'"
    names = ", ".join(f"'{p}'" for p in paths[:shown])
    more = ", ..." if len(paths) > shown else ""
    return f"{len(paths)} layers ({names}{more})"
