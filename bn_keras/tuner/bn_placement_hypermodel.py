"""Search where batch normalization goes in the user's own model."""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import keras
import keras_tuner

from bn_keras import registry
from bn_keras._validation import check_bool
from bn_keras.layers._layer_kinds import DENSE_CONV_LAYERS
from bn_keras.models._graph import all_layers
from bn_keras.models._graph import check_layer_names
from bn_keras.models._graph import input_layers
from bn_keras.models._graph import output_layers
from bn_keras.models.insert_batchnorm import insert_batchnorm
from bn_keras.tuner.bn_hypermodel import BNHyperModel
from bn_keras.tuner.bn_hyperparameters import INPUT_BATCHNORM
from bn_keras.tuner.bn_hyperparameters import NORMALIZATIONS
from bn_keras.tuner.bn_hyperparameters import bn_hyperparameters
from bn_keras.tuner.bn_hyperparameters import canonical_normalizations
from bn_keras.tuner.bn_hyperparameters import canonical_placements
from bn_keras.tuner.bn_hyperparameters import check_choices
from bn_keras.tuner.bn_hyperparameters import declare_input_batchnorm
from bn_keras.tuner.bn_hyperparameters import input_batchnorm_candidates

#: Hyperparameter prefix of the one shared choice when `per_layer=False`.
SHARED_NAME = "batchnorm"


def _is_rewritable(model):
    if isinstance(model, keras.Sequential):
        return True
    return isinstance(model, keras.Model) and isinstance(model, keras.Function)


def _resolve_model(model):
    """The model to find the slots in, and the function that makes one per
    `build` (`None` when every build starts from `model`'s weights)."""
    if isinstance(model, keras.Model) or not callable(model):
        model_fn, template = None, model
    else:
        model_fn, template = model, model()
    if not _is_rewritable(template):
        got = (
            f"<subclassed model {type(template).__name__}>"
            if isinstance(template, keras.Model)
            else repr(template)
        )
        raise TypeError(
            "Argument `model` must be a Sequential or Functional "
            "`keras.Model`, or a function that returns one (a subclassed "
            "model's layers cannot be rewritten). "
            f"Received: model={got}"
            + (" (returned by the function)" if model_fn else "")
        )
    return template, model_fn


def _check_input_batchnorm(input_batchnorm, template):
    """The candidates of `input_batchnorm`, possible for `template`."""
    values = input_batchnorm_candidates("input_batchnorm", input_batchnorm)
    adds_one = any(v not in (False, "none") for v in values)
    if adds_one and (
        isinstance(template, keras.Sequential) and not template.built
    ):
        raise ValueError(
            "Argument `input_batchnorm` may add an input normalization only "
            "to a model whose inputs are known: start the Sequential model "
            f"with `keras.Input`. Received: input_batchnorm={input_batchnorm!r}"
        )
    return values


def _check_compile_kwargs(compile_kwargs):
    if compile_kwargs is not None and not (
        isinstance(compile_kwargs, dict) or callable(compile_kwargs)
    ):
        raise TypeError(
            "Argument `compile_kwargs` must be None, a dict of "
            "`model.compile` arguments or a function `hp -> dict`. "
            f"Received: compile_kwargs={compile_kwargs!r}"
        )
    return compile_kwargs


def _output_effective(placement):
    """What a placement means for a layer that computes an output: BN
    after it would normalize the logits or the target, so none goes there
    (as `bn_keras.insert_batchnorm` does by default)."""
    if registry.placement_order(placement)[0] == "bn":
        return placement
    return "layer-act"


def _input_effective(placement):
    """What a placement means for a layer that reads a model input: the
    pre-activation placement puts BN and an activation before the layer,
    and the input has no activation to move, so none goes there (as
    `bn_keras.insert_batchnorm` does by default)."""
    if registry.placement_order(placement)[0] == "bn":
        return "layer-act"
    return placement


def _freeze(value):
    """A hashable key for a normalization dict (values are numbers, strings,
    booleans or a `RenormClipping`)."""
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if hasattr(value, "get_config"):
        return (type(value).__name__, _freeze(value.get_config()))
    return value


def _fresh(value):
    """A new optimizer, loss or metric from the config of one (so that no
    two built models share one); other values as they are."""
    for base, module in (
        (keras.optimizers.Optimizer, keras.optimizers),
        (keras.losses.Loss, keras.losses),
        (keras.metrics.Metric, keras.metrics),
    ):
        if isinstance(value, base):
            return module.deserialize(module.serialize(value))
    if isinstance(value, dict):
        return {k: _fresh(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_fresh(v) for v in value)
    return value


class BNPlacementHyperModel(BNHyperModel):
    """Searches where batch normalization goes in your own Keras model.

    Give it your model without batch normalization. Its slots are its
    `Dense` and convolution layers (those `bn_keras.insert_batchnorm`
    normalizes), nested models' included, or the layers named in `layers`.
    `build(hp)` declares, for each slot, the choices of
    `bn_keras.tuner.bn_hyperparameters` under the slot's layer name
    (`"dense_1/placement"`, `"dense_1/normalization"`, ...), or, with
    `per_layer=False`, one shared choice under the name `"batchnorm"`, and
    `"input_batchnorm"` when `input_batchnorm` has two candidates. It then
    returns a new model, made with `bn_keras.insert_batchnorm`, with each
    slot's chosen BN, compiled with `compile_kwargs` or else as your model
    is.

    A slot that computes a model output (the last `Dense` or convolution
    layer of a path to an output, which produces the logits or the target)
    never gets BN after it: its choices are only `"bn-act-layer"` (BN and
    the activation before it) and `"layer-act"`, among those of
    `placements` (a placement that puts BN after the layer counts as
    `"layer-act"`). Likewise a slot that reads a model input (the first
    `Dense` or convolution layer of a path from an input) never gets BN
    before it, as `bn_keras.insert_batchnorm` does: `"bn-act-layer"` counts
    as `"layer-act"` there (the input has no activation to move; the
    `input_batchnorm` choice standardizes it). A slot gets no
    hyperparameter when that leaves one choice. Neighbouring slots that
    both put BN between them (`"layer-bn-act"` then `"bn-act-layer"`) get
    both, each next to the one activation between the two layers.

    Your model is never modified, and no layer or weight of it is shared
    with the models built: each starts from a copy of your model's weights
    (a pretrained model stays pretrained). Pass a function that returns the
    model instead to start each trial from a fresh initialization: it is
    called once here, to find the slots, and once per `build`. `build` is
    cheap and has no side effects, as keras-tuner calls it several times
    to discover the conditional hyperparameters.

    Trials train through `bn_keras.tuner.BNHyperModel.fit`: a trial whose
    BN weights turn NaN or infinite fails cleanly, and a `TensorBoard`
    callback and `bn_keras.callbacks.BatchNormMonitor` passed to `search`
    write to one folder per trial.

    Args:
        model: A Sequential or Functional `keras.Model` without batch
            normalization, or a function of no arguments that returns one.
        placements: Placement names to choose from, per slot. Defaults to
            all four (see `bn_keras.registry`).
        normalizations: Names among `"batch"`, `"ghost"` and `"renorm"`.
            Defaults to all three.
        per_layer: If `True`, each slot has its own choices; if `False`, one
            choice applies to every slot (as one call of
            `bn_keras.insert_batchnorm`). Defaults to `True`.
        input_batchnorm: What standardizes the inputs, or a list of
            candidates to choose from (see `bn_keras.insert_batchnorm`):
            booleans, `True`, `False`, or both, `(False, True)`, searched
            with `hp.Boolean` (`True` uses the first slot's normalization
            when that slot has BN, plain BN otherwise); or input
            normalization names, `"none"`, `"batch"` (plain BN) and
            `"renorm"` (the input normalizer with cumulative statistics),
            searched with `hp.Choice` (in such a list, `False` counts as
            `"none"` and `True` as `"batch"`). Defaults to `(False, True)`.
        compile_kwargs: Optional dict of `model.compile` arguments, or a
            function `hp -> dict` (to search the learning rate, say).
            Optimizer, loss and metric instances are copied for each model.
            Defaults to `None`: each model is compiled as `model` is (an
            uncompiled `model` then needs the tuner's `optimizer` and
            `loss`).
        layers: Optional list of the names of the layers to use as slots
            instead of every `Dense` and convolution layer. Defaults to
            `None`.
        name: Optional name of the hypermodel.
        tunable: Whether its hyperparameters are searched. Defaults to
            `True`.
        **choices: Further arguments of `bn_hyperparameters`, applied to
            every slot: `momentum`, `virtual_batch_size`, `rmax`, `dmax`,
            `warmup_steps`, `ramp_steps`, `normalization_kwargs`.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((8,)),
    ...     keras.layers.Dense(16, activation="relu", name="hidden"),
    ...     keras.layers.Dense(1, name="out"),
    ... ])
    >>> model.compile("adam", "mse")
    >>> hypermodel = bn_keras.tuner.BNPlacementHyperModel(
    ...     model, placements=["layer-bn-act", "layer-act"],
    ...     normalizations=["batch"], input_batchnorm=False)
    >>> hypermodel.slots  # "out" computes the output: never BN after it
    ['hidden', 'out']
    >>> hp = keras_tuner.HyperParameters()
    >>> built = hypermodel.build(hp)
    >>> [layer.name for layer in built.layers]
    ['hidden', 'hidden_bn', 'hidden_act', 'out']
    >>> for name in sorted(hp.values):
    ...     print(name)
    hidden/momentum
    hidden/normalization
    hidden/placement
    input_batchnorm
    """

    def __init__(
        self,
        model: keras.Model | Callable[[], keras.Model],
        *,
        placements: Sequence[str | None] = registry.PLACEMENTS,
        normalizations: Sequence[str] = NORMALIZATIONS,
        per_layer: bool = True,
        input_batchnorm: Any = (False, True),
        compile_kwargs: dict[str, Any]
        | Callable[[Any], dict[str, Any]]
        | None = None,
        layers: list[str] | None = None,
        name: str | None = None,
        tunable: bool = True,
        **choices: Any,
    ) -> None:
        super().__init__(name=name, tunable=tunable)
        self.choices = check_choices(self, choices)
        template, self._model_fn = _resolve_model(model)
        self._template = None if self._model_fn else template
        self.per_layer = check_bool("per_layer", per_layer)
        self.placements = canonical_placements(placements)
        self.input_batchnorm = _check_input_batchnorm(
            input_batchnorm, template
        )
        self.compile_kwargs = _check_compile_kwargs(compile_kwargs)
        self.slots, self._ends = self._find_slots(template, layers)
        self._explicit_layers = layers is not None
        self.normalizations = canonical_normalizations(normalizations)
        # Validates every choice now rather than in the first trial.
        bn_hyperparameters(
            keras_tuner.HyperParameters(),
            SHARED_NAME,
            placements=self.placements,
            normalizations=self.normalizations,
            **self.choices,
        )

    @staticmethod
    def _find_slots(model, layers):
        """The slot names in forward order, and those that compute an
        output and those that read an input."""
        every = all_layers(model)
        names = [layer.name for layer in every]
        dense_conv = [
            layer.name
            for layer in every
            if isinstance(layer, DENSE_CONV_LAYERS)
        ]
        chosen = check_layer_names(
            layers,
            known=names,
            listed=dense_conv,
            label="Dense and convolution layers",
        )
        if chosen is None:
            slots = dense_conv
        else:
            slots = [n for n in dict.fromkeys(names) if n in chosen]
        duplicated = sorted({n for n in slots if names.count(n) > 1})
        if duplicated:
            raise ValueError(
                "The hyperparameters are named after the layers, so each "
                "slot's layer needs a name of its own in the whole model "
                "(nested models included); give these layers distinct "
                f"`name`s. Received: layers named {duplicated} more than once"
            )
        if not slots:
            raise ValueError(
                "Argument `model` has no Dense or convolution layer to put "
                "batch normalization around; name the layers to use in "
                f"`layers`. Received: model=<{type(model).__name__} "
                f"name={model.name}>"
            )
        # The slots that `insert_batchnorm` leaves without BN after them,
        # and (with "bn-act-layer") before them.
        ends = [
            {
                layer.name
                for layer in find(model, "insert_batchnorm")
                if isinstance(layer, DENSE_CONV_LAYERS)
            }.intersection(slots)
            for find in (output_layers, input_layers)
        ]
        return slots, ends

    def slot_placements(self, slot):
        """The placements searched for one slot (see the class docstring)."""
        return tuple(
            dict.fromkeys(self._effective(slot, p) for p in self.placements)
        )

    def _effective(self, slot, placement):
        """What `placement` means for `slot`: `"layer-act"` for a placement
        that would put BN after an output slot or before an input slot."""
        outputs, inputs = self._ends
        if slot in outputs:
            placement = _output_effective(placement)
        if slot in inputs:
            placement = _input_effective(placement)
        return placement

    def declare_choices(self, hp):
        """Declares the hyperparameters in `hp`; returns the choices.

        Returns:
            A tuple `(choices, input_batchnorm)`: a dict from slot name to
            the `bn_hyperparameters` result (`{"placement": ...,
            "normalization": ...}`), in forward order, and the value of
            `"input_batchnorm"` (a boolean or an input normalization name).
        """
        choices = {}
        if self.per_layer:
            for slot in self.slots:
                placements = self.slot_placements(slot)
                if placements == ("layer-act",):
                    choices[slot] = {
                        "placement": "layer-act",
                        "normalization": None,
                    }
                    continue
                choice = bn_hyperparameters(
                    hp,
                    slot,
                    placements=placements,
                    normalizations=self.normalizations,
                    **self.choices,
                )
                if choice is not None and (
                    self._effective(slot, choice["placement"]) == "layer-act"
                ):  # e.g. "bn-act-layer" set in `hp` for an input slot
                    choice = {"placement": "layer-act", "normalization": None}
                choices[slot] = choice
        else:
            shared = bn_hyperparameters(
                hp,
                SHARED_NAME,
                placements=self.placements,
                normalizations=self.normalizations,
                **self.choices,
            )
            for slot in self.slots:
                choices[slot] = shared
        input_bn = declare_input_batchnorm(
            hp, INPUT_BATCHNORM, self.input_batchnorm
        )
        return choices, input_bn

    def build(self, hp: keras_tuner.HyperParameters) -> keras.Model:
        model = self._model_fn() if self._model_fn else self._template
        choices, input_bn = self.declare_choices(hp)
        if self.per_layer:
            new_model = self._insert_per_slot(model, choices, input_bn)
        else:
            shared = choices[self.slots[0]]
            new_model = insert_batchnorm(
                model,
                placement=shared["placement"],
                normalization=shared["normalization"],
                layers=self.slots if self._explicit_layers else None,
                input_batchnorm=input_bn,
            )
        if self.compile_kwargs is not None:
            kwargs = (
                self.compile_kwargs(hp)
                if callable(self.compile_kwargs)
                else _fresh(dict(self.compile_kwargs))
            )
            new_model.compile(**kwargs)
        return new_model

    def _insert_per_slot(self, model, choices, input_bn):
        """One `insert_batchnorm` call per distinct (placement,
        normalization) choice, in the forward order of their first slot;
        `input_bn` is a boolean or an input normalization name."""
        groups = {}
        for slot, choice in choices.items():
            if choice is None or not registry.has_batchnorm(
                choice["placement"]
            ):
                continue
            key = (choice["placement"], _freeze(choice["normalization"]))
            groups.setdefault(key, (choice, []))[1].append(slot)
        first = next(iter(choices.values()))
        first_has_bn = first is not None and registry.has_batchnorm(
            first["placement"]
        )
        calls = list(groups.values())
        if input_bn is True and not first_has_bn:
            input_bn = "batch"  # a plain standardizing BN of its own
        # The first call adds the input normalization (`True`: with its
        # normalization, the first slot's), as one `insert_batchnorm` call
        # would: with BN on the first layer's input, it takes its place.
        new_model = None
        for i, (choice, slots) in enumerate(calls):
            new_model = insert_batchnorm(
                model if new_model is None else new_model,
                placement=choice["placement"],
                normalization=choice["normalization"],
                layers=slots,
                input_batchnorm=input_bn if i == 0 else False,
            )
        if new_model is None:  # no BN in the layers: still a copy
            new_model = insert_batchnorm(
                model, placement="layer-act", input_batchnorm=input_bn
            )
        return new_model
