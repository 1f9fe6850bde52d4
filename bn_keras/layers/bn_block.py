"""A layer with batch normalization and an activation at a chosen place."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras

from bn_keras._names import get_placement
from bn_keras._names import placement_order
from bn_keras.layers._layer_kinds import channel_axis
from bn_keras.layers._layer_kinds import is_linear_activation
from bn_keras.layers._normalization_spec import normalization_layer
from bn_keras.layers._normalization_spec import serialize_normalization


def _describe(layer):
    return f"<{type(layer).__name__} name={layer.name}>"


@keras.saving.register_keras_serializable(package="bn_keras")
class BNBlock(keras.layers.Layer):
    """A layer, batch normalization and an activation, in a chosen order.

    Wraps a `Dense`, `Conv1D`/`Conv2D`/`Conv3D`, `SeparableConv` or
    `DepthwiseConv` layer (or any layer that maps features to features) and
    applies, depending on `placement`:

    | placement        | alias                 | order                     |
    | ---------------- | --------------------- | ------------------------- |
    | `"layer-bn-act"` | `"before_activation"` | layer, BN, activation     |
    | `"layer-act-bn"` | `"after_activation"`  | layer, activation, BN     |
    | `"bn-act-layer"` | `"pre_activation"`    | BN, activation, layer     |
    | `"layer-act"`    | `"none"`, `None`      | layer, activation (no BN) |

    `"layer-bn-act"` is the original paper's order; `"layer-act-bn"` puts
    BN after the nonlinearity; `"bn-act-layer"` is the pre-activation
    residual style.

    When BN directly follows the layer (`"layer-bn-act"`, with a centering
    BN) the layer's bias is redundant, BN's `beta` takes its place, so the
    block uses a copy of the layer built with `use_bias=False`. An
    activation set inside the layer (`Dense(64, activation="relu")`) is
    moved out of it and becomes the block's `activation`, so that BN can go
    between. Read the layer actually used back from `block.layer`.

    **During training** the BN layer normalizes with batch statistics and
    updates its moving statistics; **during inference** it uses the moving
    statistics (see `bn_keras.layers.BatchNormalization`). The `training`
    flag is passed on to the sub-layers.

    Args:
        layer: The layer to wrap, a `keras.layers.Layer`. If the block has
            to drop its bias or move its activation, the layer must not be
            built yet (a copy with the changed config is used).
        activation: Activation function or name (as for `Dense`), or `None`
            for none (or for the one set inside `layer`). Defaults to
            `None`.
        placement: A placement name or alias from the table above, or
            `None` (no BN). Defaults to `"layer-bn-act"`.
        normalization: Which BN to use (must be `None` with placement
            `"layer-act"`, which has no BN). `None` for
            `bn_keras.layers.BatchNormalization` defaults; a dict of its
            arguments; a registry name, `"batch"`, `"ghost"` or `"renorm"`;
            or a layer instance, used as a template (the block builds a
            fresh layer from its config). For a channels-first layer, BN
            normalizes axis 1 unless the dict or template says otherwise.
            Defaults to `None`.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: Input tensor of the wrapped layer (or of BN for
            `"bn-act-layer"`).
        training: Python boolean or boolean scalar tensor, passed to the
            sub-layers.

    Reference:

    - [Ioffe and Szegedy, 2015](https://arxiv.org/abs/1502.03167)
      (BN before the nonlinearity).
    - [He et al., 2016](https://arxiv.org/abs/1603.05027)
      (pre-activation residual units).

    Example:

    >>> block = bn_keras.layers.BNBlock(
    ...     keras.layers.Dense(8), activation="relu", placement="layer-bn-act"
    ... )
    >>> y = block(np.ones((4, 3), "float32"), training=True)
    >>> tuple(y.shape), block.layer.use_bias
    ((4, 8), False)
    >>> [type(layer).__name__ for layer in block.layers]
    ['Dense', 'BatchNormalization', 'Activation']
    """

    def __init__(
        self,
        layer: keras.layers.Layer,
        activation: str | Callable[..., Any] | None = None,
        placement: str | None = "layer-bn-act",
        normalization: str | dict[str, Any] | keras.layers.Layer | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.placement = get_placement(placement)
        order = placement_order(self.placement)
        layer = _check_layer(layer)
        normalization = _resolve_normalization(normalization, order, layer)
        layer_config = layer.get_config()
        activation, changes = _split_activation(layer, order, activation)
        self.drops_bias = (
            order[:2] == ("layer", "bn")
            and isinstance(normalization, keras.layers.BatchNormalization)
            and normalization.center
        )
        if self.drops_bias and layer_config.get("use_bias"):
            changes["use_bias"] = False
        if changes:
            layer = _rewritten(layer, layer_config, changes)

        self.layer = layer
        self.normalization = normalization
        self.activation = (
            None if activation is None else keras.activations.get(activation)
        )
        self.activation_layer = None
        if not is_linear_activation(self.activation):
            self.activation_layer = keras.layers.Activation(
                self.activation, name=f"{self.name}_activation"
            )
        self._order = order

    @property
    def layers(self) -> list[keras.layers.Layer]:
        """The sub-layers in forward order (the activation as a layer)."""
        steps = {
            "layer": self.layer,
            "bn": self.normalization,
            "act": self.activation_layer,
        }
        return [steps[s] for s in self._order if steps.get(s) is not None]

    def build(self, input_shape):
        shape = tuple(input_shape)
        for sublayer in self.layers:
            if sublayer is self.normalization:
                self._check_normalization_axis(shape)
            if not sublayer.built:
                sublayer.build(shape)
            shape = tuple(sublayer.compute_output_shape(shape))

    def _check_normalization_axis(self, shape):
        """BN must normalize the features axis of a conv layer."""
        axis = getattr(self.normalization, "axis", None)
        data_format = getattr(self.layer, "data_format", None)
        rank = len(shape)
        if data_format is None or not isinstance(axis, int):
            return
        if not -rank <= axis < rank:
            return  # the BN layer's own build reports it
        expected = channel_axis(self.layer) % rank
        if axis % rank != expected:
            raise ValueError(
                "The normalization must normalize the features axis of "
                f"{_describe(self.layer)} (data_format='{data_format}'), "
                f"which is axis {expected} of its inputs of shape {shape}. "
                f"Received: axis={axis}"
            )

    def compute_output_shape(self, input_shape):
        shape = tuple(input_shape)
        for sublayer in self.layers:
            shape = tuple(sublayer.compute_output_shape(shape))
        return shape

    def call(self, inputs, training=None):
        x = inputs
        for step in self._order:
            if step == "layer":
                x = self.layer(x, training=training)
            elif step == "bn":
                x = self.normalization(x, training=training)
            elif self.activation_layer is not None:
                x = self.activation_layer(x)
        return x

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "layer": keras.saving.serialize_keras_object(self.layer),
                "activation": (
                    None
                    if self.activation is None
                    else keras.activations.serialize(self.activation)
                ),
                "placement": self.placement,
                "normalization": serialize_normalization(
                    self.normalization
                ),
            }
        )
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> BNBlock:
        config = dict(config)
        # Sub-layers are built by the block's `build` (inside its name
        # scope, so their weights keep paths like "block/dense/kernel"),
        # not as they are deserialized.
        for key in ("layer", "normalization"):
            if isinstance(config.get(key), dict):
                config[key] = {
                    k: v for k, v in config[key].items() if k != "build_config"
                }
        config["layer"] = keras.saving.deserialize_keras_object(config["layer"])
        return cls(**config)


def _check_layer(layer):
    """The wrapped layer, deserialized if need be; a clear error otherwise."""
    if isinstance(layer, dict):
        layer = keras.saving.deserialize_keras_object(layer)
    if not isinstance(layer, keras.layers.Layer):
        raise TypeError(
            "Argument `layer` must be a `keras.layers.Layer` instance, "
            "such as `keras.layers.Dense(64)`. "
            f"Received: layer={layer!r}"
        )
    if isinstance(layer, keras.layers.BatchNormalization):
        raise TypeError(
            "Argument `layer` is the layer that BNBlock normalizes, not "
            "the normalization: pass the BN as `normalization`. "
            f"Received: layer={_describe(layer)}"
        )
    return layer


def _resolve_normalization(normalization, order, layer):
    """The BN layer of a placement with BN; `None` for `"layer-act"`."""
    if "bn" in order:
        return normalization_layer(
            normalization, axis=channel_axis(layer)
        )
    if normalization is not None:
        raise ValueError(
            "Argument `normalization` has no effect with placement "
            "'layer-act' (no batch normalization); pass "
            "`normalization=None` or another placement. "
            f"Received: normalization={normalization!r}"
        )
    return None


def _split_activation(layer, order, activation):
    """The block's activation, and the config changes that move the wrapped
    layer's own activation out of it (`{"activation": "linear"}`)."""
    layer_activation = layer.get_config().get("activation")
    if is_linear_activation(layer_activation):
        return activation, {}
    if order[0] == "bn":
        raise ValueError(
            "With placement 'bn-act-layer' the activation comes "
            "before the layer, so the wrapped layer must have none; "
            "pass it as `activation`. "
            f"Received: layer={_describe(layer)} with "
            f"activation={layer_activation!r}"
        )
    if activation is not None:
        raise ValueError(
            "Argument `activation` is given and the wrapped layer "
            "has an activation too; set it in one place only. "
            f"Received: activation={activation!r}, layer="
            f"{_describe(layer)} with activation={layer_activation!r}"
        )
    return layer_activation, {"activation": "linear"}


def _rewritten(layer, layer_config, changes):
    """A new, unbuilt copy of `layer` with `changes` to its config."""
    if layer.built:
        raise ValueError(
            "BNBlock must change the wrapped layer ("
            + ", ".join(f"{k}={v!r}" for k, v in changes.items())
            + ") and so needs it unbuilt: its weights would be lost. "
            "Pass a new layer, or one built with these arguments. "
            f"Received: layer={_describe(layer)} (built)"
        )
    return type(layer).from_config({**layer_config, **changes})
