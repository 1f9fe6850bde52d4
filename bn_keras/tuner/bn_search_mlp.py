"""A ready-made hypermodel for tabular data: an MLP searched block by block."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from bn_keras.tuner._search_models import SearchModel


class BNSearchMLP(SearchModel):
    """A multilayer perceptron whose depth, widths, learning rate and
    batch normalization, block by block, are searched.

    The model is `[input BN] -> block_0 -> ... -> block_{n-1} -> head`, where
    block `i` is a `bn_keras.layers.BNBlock` wrapping `Dense(units)` (named
    `"block_{i}_dense"`) with the activation, and the head a `Dense` layer
    without BN. It is compiled with Adam: for classification with
    `SparseCategoricalCrossentropy(from_logits=True)` and `"accuracy"`
    (integer labels, logits out), for regression with `"mse"` and `"mae"`.

    Each block's placement says where its BN goes, and between two
    consecutive layers there is always one activation: a `"bn-act-layer"`
    block (BN, activation, layer) applies the activation of the layer
    before it, which then has none after it, and an `Activation` layer
    `"block_{i}_act"` follows a `"bn-act-layer"` block whose next block
    (or the head) puts BN after its own layer. The first block reads the
    input, which has no activation to move: there `"bn-act-layer"` counts
    as `"layer-act"` (the `"input_batchnorm"` choice standardizes the
    input).

    Hyperparameters: `"num_layers"`; per block, `"block_{i}/units"` and the
    choices of `bn_keras.tuner.bn_hyperparameters` under `"block_{i}"`
    (`"block_{i}/placement"`, `"block_{i}/normalization"`, ...), all
    conditional on `"num_layers"` being above `i`; `"learning_rate"`;
    `"input_batchnorm"`, when it has two candidates. Every choice argument
    takes one value (declared `hp.Fixed`) or a list of candidates (`hp.Choice`,
    the first one the default).

    Trials train through `bn_keras.tuner.BNHyperModel.fit`: a trial whose
    BN weights turn NaN or infinite fails cleanly, and a `TensorBoard`
    callback and `bn_keras.callbacks.BatchNormMonitor` passed to `search`
    write to one folder per trial.

    Args:
        num_classes: Number of classes, or `None` (or `1`) for regression
            of one target.
        input_shape: Optional shape of one sample, e.g. `(64,)`. Defaults
            to `None` (the model is built on the first batch).
        num_layers: Number of hidden blocks. Defaults to `(1, 2, 3)`.
        units: Width of each block. Defaults to `(32, 64, 128)`.
        learning_rate: Adam's learning rate. Defaults to `(1e-3, 1e-2)`.
        activation: Activation of the blocks. Defaults to `"relu"`.
        placements: Placement names, per block. Defaults to all four.
        normalizations: Names among `"batch"`, `"ghost"`, `"renorm"`.
            Defaults to all three.
        input_batchnorm: Whether a BN without `gamma` and `beta` standardizes
            the inputs: `True` (plain BN), `False` or both, `(False, True)`;
            or input normalization names among `"none"`, `"batch"` and
            `"renorm"` (see `bn_keras.insert_batchnorm`), one or a list.
            Defaults to `(False, True)`.
        name: Optional name of the hypermodel (and of the models).
        tunable: Whether its hyperparameters are searched. Defaults to
            `True`.
        **choices: Further arguments of `bn_hyperparameters`, for every
            block: `momentum`, `virtual_batch_size`, `rmax`, `dmax`,
            `warmup_steps`, `ramp_steps`, `normalization_kwargs`.

    Example:

    >>> hypermodel = bn_keras.tuner.BNSearchMLP(
    ...     3, input_shape=(8,), num_layers=2, units=16)
    >>> hp = keras_tuner.HyperParameters()
    >>> model = hypermodel.build(hp)
    >>> [layer.name for layer in model.layers]
    ['block_0', 'block_1', 'head']
    >>> hp.values["block_0/placement"], hp.values["num_layers"]
    ('layer-bn-act', 2)
    """

    depth_name = "num_layers"
    width_name = "units"

    def __init__(
        self,
        num_classes: int | None,
        *,
        num_layers: int | Sequence[int] = (1, 2, 3),
        units: int | Sequence[int] = (32, 64, 128),
        input_batchnorm: Any = (False, True),
        **kwargs: Any,
    ) -> None:
        super().__init__(
            num_classes,
            depth=num_layers,
            width=units,
            input_batchnorm=input_batchnorm,
            **kwargs,
        )

    def make_layer(self, index, width):
        return keras.layers.Dense(width, name=f"block_{index}_dense")
