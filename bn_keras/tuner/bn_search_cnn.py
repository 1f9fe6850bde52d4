"""A ready-made hypermodel for images: a CNN searched block by block."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from bn_keras.tuner._search_models import SearchModel
from bn_keras.tuner.bn_hyperparameters import number_candidates


class BNSearchCNN(SearchModel):
    """A small convolutional network whose depth, filters, learning rate and
    batch normalization, block by block, are searched.

    The model is `[input BN] -> block_0 -> pool -> ... -> global average
    pooling -> head`, for channels-last images of shape `(height, width,
    channels)`. Block `i` is a `bn_keras.layers.BNBlock` wrapping
    `Conv2D(filters, kernel_size, padding="same")` (named
    `"block_{i}_conv"`) with the activation, followed by a 2x2
    `MaxPooling2D` with `"same"` padding (named `"block_{i}_pool"`, so small
    images survive deep networks). The head is a `Dense` layer without BN.
    It is compiled with Adam: for classification with
    `SparseCategoricalCrossentropy(from_logits=True)` and `"accuracy"`
    (integer labels), for regression with `"mse"` and `"mae"`.

    Placements as in `bn_keras.tuner.BNSearchMLP`: one activation between
    two consecutive layers (a `"bn-act-layer"` block applies the one of the
    block before it), and no BN before the first block.

    Hyperparameters: `"num_blocks"`; per block, `"block_{i}/filters"` and the
    choices of `bn_keras.tuner.bn_hyperparameters` under `"block_{i}"`, all
    conditional on `"num_blocks"` being above `i`; `"learning_rate"`;
    `"input_batchnorm"`, when it has two candidates. Every choice argument
    takes one value (`hp.Fixed`) or a list of candidates (`hp.Choice`).

    Trials train through `bn_keras.tuner.BNHyperModel.fit` (non-finite BN
    weights fail the trial; TensorBoard and `BatchNormMonitor` callbacks
    write to one folder per trial).

    Args:
        num_classes: Number of classes, or `None` (or `1`) for regression
            of one target.
        input_shape: Optional shape of one image, `(height, width,
            channels)`. Defaults to `None` (built on the first batch).
        num_blocks: Number of convolution blocks. Defaults to `(1, 2, 3)`.
        filters: Filters of each block. Defaults to `(16, 32, 64)`.
        kernel_size: Kernel size of the convolutions (not searched).
            Defaults to `3`.
        learning_rate: Adam's learning rate. Defaults to `(1e-3, 1e-2)`.
        activation: Activation of the blocks. Defaults to `"relu"`.
        placements: Placement names, per block. Defaults to all four.
        normalizations: Names among `"batch"`, `"ghost"`, `"renorm"`.
            Defaults to all three.
        input_batchnorm: Whether a BN without `gamma` and `beta` standardizes
            the inputs (per channel): `True` (plain BN), `False` or both;
            or input normalization names among `"none"`, `"batch"` and
            `"renorm"` (see `bn_keras.insert_batchnorm`), one or a list.
            Defaults to `False`.
        name: Optional name of the hypermodel (and of the models).
        tunable: Whether its hyperparameters are searched. Defaults to
            `True`.
        **choices: Further arguments of `bn_hyperparameters`, for every
            block: `momentum`, `virtual_batch_size`, `rmax`, `dmax`,
            `warmup_steps`, `ramp_steps`, `normalization_kwargs`.

    Example:

    >>> hypermodel = bn_keras.tuner.BNSearchCNN(
    ...     10, input_shape=(8, 8, 1), num_blocks=2, filters=8)
    >>> model = hypermodel.build(keras_tuner.HyperParameters())
    >>> [layer.name for layer in model.layers]
    ['block_0', 'block_0_pool', 'block_1', 'block_1_pool', 'pool', 'head']
    """

    depth_name = "num_blocks"
    width_name = "filters"

    def __init__(
        self,
        num_classes: int | None,
        *,
        num_blocks: int | Sequence[int] = (1, 2, 3),
        filters: int | Sequence[int] = (16, 32, 64),
        kernel_size: int = 3,
        input_batchnorm: Any = False,
        input_shape: tuple[int, ...] | None = None,
        **kwargs: Any,
    ) -> None:
        if input_shape is not None and (
            not isinstance(input_shape, (list, tuple)) or len(input_shape) != 3
        ):
            raise ValueError(
                "Argument `input_shape` must be None or the shape of one "
                "channels-last image, (height, width, channels). "
                f"Received: input_shape={input_shape!r}"
            )
        if isinstance(kernel_size, (list, tuple)):
            raise TypeError(
                "Argument `kernel_size` must be one positive integer (it is "
                f"not searched). Received: kernel_size={kernel_size!r}"
            )
        (self.kernel_size,) = number_candidates(
            "kernel_size", kernel_size, int, 1
        )
        super().__init__(
            num_classes,
            depth=num_blocks,
            width=filters,
            input_batchnorm=input_batchnorm,
            input_shape=input_shape,
            **kwargs,
        )

    def make_layer(self, index, width):
        return keras.layers.Conv2D(
            width,
            self.kernel_size,
            padding="same",
            name=f"block_{index}_conv",
        )

    def after_block(self, index):
        return [
            keras.layers.MaxPooling2D(
                2, padding="same", name=f"block_{index}_pool"
            )
        ]

    def before_head(self):
        return [keras.layers.GlobalAveragePooling2D(name="pool")]
