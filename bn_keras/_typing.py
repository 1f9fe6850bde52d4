"""Names for the types of the public API's arguments.

Each is what the arguments of that kind accept; Keras's own classes stand
for its objects (Keras ships no type information: for a type checker they
are `Any`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from typing import TypeAlias

import keras

#: An initializer: a name (`"zeros"`), a config dict or an instance.
Initializer: TypeAlias = str | dict[str, Any] | keras.initializers.Initializer

#: An optional regularizer: a name, a config dict or an instance.
Regularizer: TypeAlias = (
    str | dict[str, Any] | keras.regularizers.Regularizer | None
)

#: An optional constraint: a name, a config dict or an instance.
Constraint: TypeAlias = (
    str | dict[str, Any] | keras.constraints.Constraint | None
)

#: What `normalization` arguments accept: a name of `bn_keras.registry`
#: (`"batch"`, `"ghost"`, `"renorm"`, ...), a dict of
#: `bn_keras.layers.BatchNormalization` arguments, a BN layer used as a
#: template, or `None` for the defaults.
Normalization: TypeAlias = str | dict[str, Any] | keras.layers.Layer | None

#: What `input_batchnorm` arguments accept: `True` or `False`, an input
#: normalization name (`"none"`, `"batch"`, `"renorm"`), a dict of
#: `bn_keras.layers.BatchNormalization` arguments, a layer, or `None`.
InputNormalization: TypeAlias = (
    bool | str | dict[str, Any] | keras.layers.Layer | None
)

#: Which layers of a model a function acts on: their names, or a function
#: `layer -> bool`; `None` for its default choice.
LayerSelection: TypeAlias = (
    list[str] | tuple[str, ...] | Callable[[Any], bool] | None
)
