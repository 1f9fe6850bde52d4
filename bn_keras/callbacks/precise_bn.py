"""Callback that recomputes exact batch normalization statistics."""

from __future__ import annotations

from typing import Any
from typing import Literal

import keras

from bn_keras.models._tracing import batch_source
from bn_keras.models._tracing import check_steps
from bn_keras.models.recalibrate import recalibrate

_WHEN = ("train_end", "epoch_end")


class PreciseBN(keras.callbacks.Callback):
    """Recomputes exact population statistics of every BN layer during `fit`.

    At the end of training (`on="train_end"`) or of every epoch
    (`on="epoch_end"`), calls `bn_keras.recalibrate(model, data, steps,
    batch_size)` with its default method, `"two-pass"`: each batch
    normalization layer's moving mean and variance become the pooled
    statistics of its inputs over `steps` batches of `data`, instead of
    the exponential averages kept during training. Two compiled passes
    over the batches: in the first, every layer normalizes by its own
    batch's statistics while the moments of its inputs are pooled (exact
    for the first layers); in the second, those layers run in inference
    with their new statistics and the layers right after them get exact
    statistics too, deeper layers the batch-normalized estimate, which
    predicts as the exact statistics do within the noise of recalibration.
    For the exact statistics of every layer (one partial pass per layer,
    in forward order with the model in inference mode, tens of times
    slower), call `bn_keras.recalibrate(model, data, method="layerwise")`
    yourself. See `bn_keras.recalibrate` for the details (renorm layers
    included).

    With `on="epoch_end"`, keep in mind that `fit` evaluates the validation
    data before the epoch-end callbacks run: an epoch's validation metrics
    use the statistics from before that epoch's recalibration. Callbacks
    placed after this one (`ModelCheckpoint`, say) see the recalibrated
    model.

    Args:
        data: The batches to compute statistics over, in any form
            `bn_keras.recalibrate` accepts (arrays, a `tf.data.Dataset`, a
            `keras.utils.PyDataset`, an iterable of batches). Usually the
            training data, without augmentation.
        steps: Positive integer: the number of batches to use. Defaults to
            `200`.
        on: `"train_end"` to recalibrate once after training or
            `"epoch_end"` to recalibrate after every epoch. Defaults to
            `"train_end"`.
        batch_size: Batch size for array data. Defaults to `32`.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((4,)),
    ...     keras.layers.Dense(8),
    ...     bn_keras.layers.BatchNormalization(momentum=0.999),
    ...     keras.layers.Dense(1),
    ... ])
    >>> model.compile("sgd", "mse")
    >>> x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    >>> precise = bn_keras.callbacks.PreciseBN(x, steps=2, batch_size=32)
    >>> _ = model.fit(x, x[:, :1], epochs=1, verbose=0, callbacks=[precise])
    """

    def __init__(
        self,
        data: Any,
        steps: int = 200,
        on: Literal["train_end", "epoch_end"] = "train_end",
        batch_size: int | None = None,
    ) -> None:
        super().__init__()
        if on not in _WHEN:
            raise ValueError(
                f"Argument `on` must be one of {list(_WHEN)}. "
                f"Received: on={on!r}"
            )
        self.steps = check_steps(steps)
        batch_source(data, batch_size)  # validates `data` and `batch_size`
        self.data = data
        self.on = on
        self.batch_size = batch_size

    def _recalibrate(self):
        recalibrate(
            self.model, self.data, steps=self.steps, batch_size=self.batch_size
        )

    def on_epoch_end(self, epoch, logs=None):
        if self.on == "epoch_end":
            self._recalibrate()

    def on_train_end(self, logs=None):
        if self.on == "train_end":
            self._recalibrate()
