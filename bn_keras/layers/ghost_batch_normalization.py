"""Ghost batch normalization: `BatchNormalization` with ghost batches on."""

from __future__ import annotations

from typing import Any

import keras

from bn_keras.layers.batch_normalization import BatchNormalization


@keras.saving.register_keras_serializable(package="bn_keras")
class GhostBatchNormalization(BatchNormalization):
    """Ghost batch normalization: batch statistics over small ghost batches.

    In training, the batch is split into consecutive ghost batches of
    `virtual_batch_size` samples, each normalized with its own mean and
    variance, which keeps the regularizing noise of small batches while
    training with large ones. The moving statistics record the whole batch,
    and inference is plain batch normalization with them. This is
    `bn_keras.layers.BatchNormalization(virtual_batch_size=32)`; every
    other argument is the same.

    Args:
        virtual_batch_size: Positive integer, the ghost batch size.
            Defaults to `32`.
        **kwargs: Any other argument of
            `bn_keras.layers.BatchNormalization`.

    Call arguments:
        inputs: Input tensor of any rank.
        training: Python boolean or boolean scalar tensor.
        mask: Optional boolean tensor of rank `inputs.ndim - 1`.

    Reference:

    - [Hoffer et al., 2017](https://arxiv.org/abs/1705.08741).

    Example:

    >>> layer = bn_keras.layers.GhostBatchNormalization(virtual_batch_size=8)
    >>> y = layer(np.ones((20, 4), "float32"), training=True)
    """

    def __init__(self, virtual_batch_size: int = 32, **kwargs: Any) -> None:
        if virtual_batch_size is None:
            raise ValueError(
                "Argument `virtual_batch_size` of GhostBatchNormalization "
                "must be a positive integer. "
                f"Received: virtual_batch_size={virtual_batch_size}"
            )
        super().__init__(virtual_batch_size=virtual_batch_size, **kwargs)
