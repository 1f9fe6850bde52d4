"""Batch renormalization with the paper's warm-up schedule."""

from __future__ import annotations

from typing import Any

import keras

from bn_keras.layers.batch_normalization import BatchNormalization
from bn_keras.layers.renorm_clipping import RenormClipping


@keras.saving.register_keras_serializable(package="bn_keras")
class BatchRenormalization(BatchNormalization):
    """Batch renormalization, with the paper's r_max/d_max schedule.

    In training, the batch-normalized value `x_hat` is corrected to
    `x_hat * r + d`, where `r = sigma_B / sigma` and `d = (mu_B - mu) / sigma`
    compare the batch statistics with moving ones (no gradient flows through
    `r` and `d`). `r` and `d` are clipped by bounds that start at plain batch
    normalization and relax as training goes on (see
    `bn_keras.layers.RenormClipping`), so that training output and inference
    output agree, even with small or non-i.i.d. batches. Inference is plain
    batch normalization with the moving statistics. This is
    `bn_keras.layers.BatchNormalization(renorm=True,
    renorm_clipping=bn_keras.layers.RenormClipping())`.

    Args:
        renorm_clipping: A `RenormClipping` schedule or a dict of fixed
            bounds (keys `"rmin"`, `"rmax"`, `"dmax"`). Defaults to
            `RenormClipping()`, the paper's schedule (`rmax = 1`, `dmax = 0`
            for 5,000 steps, then `rmax` reaches 3 at step 40,000 and `dmax`
            reaches 5 at step 25,000).
        renorm_momentum: Momentum of the renorm statistics. Defaults to
            `0.99` (the paper's `alpha = 0.01`).
        **kwargs: Any other argument of
            `bn_keras.layers.BatchNormalization`.

    Call arguments:
        inputs: Input tensor of any rank.
        training: Python boolean or boolean scalar tensor.
        mask: Optional boolean tensor of rank `inputs.ndim - 1`.

    Reference:

    - [Ioffe, 2017](https://arxiv.org/abs/1702.03275).

    Example:

    >>> layer = bn_keras.layers.BatchRenormalization()
    >>> y = layer(np.ones((8, 4), "float32"), training=True)
    >>> int(layer.renorm_step.numpy() if hasattr(layer.renorm_step, "numpy")
    ...     else layer.renorm_step.value)
    1
    """

    def __init__(
        self,
        renorm_clipping: dict[str, float] | RenormClipping | None = None,
        renorm_momentum: float | None = 0.99,
        **kwargs: Any,
    ) -> None:
        renorm = kwargs.pop("renorm", True)
        if renorm is not True:
            raise ValueError(
                "BatchRenormalization always uses renorm; use "
                "bn_keras.layers.BatchNormalization for plain batch "
                f"normalization. Received: renorm={renorm}"
            )
        if renorm_clipping is None:
            renorm_clipping = RenormClipping()
        super().__init__(
            renorm=True,
            renorm_clipping=renorm_clipping,
            renorm_momentum=renorm_momentum,
            **kwargs,
        )
