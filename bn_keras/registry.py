"""Names for batch normalization placements and variants.

The one place where bn-keras turns a string into a choice, in the style of
`keras.initializers.get()`: `bn_keras.insert_batchnorm`, the tuner and the
command line resolve their `placement` and `normalization` arguments here,
so every name means the same thing everywhere. The tables themselves live
in `bn_keras._names`, which imports nothing: `bn_keras.layers.BNBlock`
resolves its arguments with them there, below this module, which builds
layers.

Placements (the order of the wrapped layer, batch normalization and the
activation):

| name             | aliases                 | order                    |
| ---------------- | ----------------------- | ------------------------ |
| `"layer-bn-act"` | `"before_activation"`   | layer, BN, activation    |
| `"layer-act-bn"` | `"after_activation"`    | layer, activation, BN    |
| `"bn-act-layer"` | `"pre_activation"`      | BN, activation, layer    |
| `"layer-act"`    | `"none"`, `None`        | layer, activation (no BN)|

Each order is what stands between two Dense or convolution layers: with
`"bn-act-layer"` the activation is the one of the layer before, moved
after the BN (pre-activation). `bn_keras.insert_batchnorm` says what each
builds at the edges (a model's first and last layers, residual adds).

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

# The names live in `bn_keras._names`, which imports nothing, so that the
# layers can resolve them too; this module re-exports them. Keras and the
# layers are imported by the functions below, which build layers, on first
# use: `bn-keras --help` lists the names without starting TensorFlow.
from bn_keras._names import CONVERSIONS
from bn_keras._names import INPUT_NORMALIZATIONS
from bn_keras._names import NORMALIZATIONS
from bn_keras._names import PLACEMENT_ALIASES
from bn_keras._names import PLACEMENTS
from bn_keras._names import TUNERS
from bn_keras._names import get_conversion_name
from bn_keras._names import get_input_normalization_name
from bn_keras._names import get_normalization_name
from bn_keras._names import get_placement
from bn_keras._names import has_batchnorm
from bn_keras._names import input_normalization_names
from bn_keras._names import normalization_names
from bn_keras._names import placement_aliases
from bn_keras._names import placement_order
from bn_keras._names import placement_table
from bn_keras._names import valid_placement_names

__all__ = [
    "CONVERSIONS",
    "INPUT_NORMALIZATIONS",
    "NORMALIZATIONS",
    "PLACEMENTS",
    "PLACEMENT_ALIASES",
    "TUNERS",
    "get_conversion_class",
    "get_conversion_name",
    "get_input_normalization",
    "get_input_normalization_name",
    "get_normalization",
    "get_normalization_name",
    "get_placement",
    "has_batchnorm",
    "input_normalization_names",
    "normalization_for_run",
    "normalization_names",
    "placement_aliases",
    "placement_order",
    "placement_table",
    "serialize_normalization",
    "valid_placement_names",
]


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
    from bn_keras.layers._normalization_spec import normalization_class

    return normalization_class(name)


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
    from bn_keras.layers._normalization_spec import normalization_class

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
    return normalization_class(name)(momentum=momentum)


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
    from bn_keras.layers._normalization_spec import normalization_layer

    return normalization_layer(normalization, **defaults)


def serialize_normalization(
    layer: keras.layers.Layer | None,
) -> dict[str, Any] | None:
    """The JSON-serializable form of a normalization layer (or `None`)."""
    from bn_keras.layers import _normalization_spec

    return _normalization_spec.serialize_normalization(layer)


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
