"""Exact population statistics for the batch normalization layers of a
model (precise BN)."""

import warnings

from bn_keras._statistics import set_statistics
from bn_keras.models._tracing import PooledMoments
from bn_keras.models._tracing import StopForward
from bn_keras.models._tracing import batch_source
from bn_keras.models._tracing import channels_last_2d
from bn_keras.models._tracing import check_steps
from bn_keras.models._tracing import record_inputs
from bn_keras.models.find_batchnorm import find_batchnorm


def recalibrate(model, data, steps=200, batch_size=None):
    """Sets each batch normalization layer's moving statistics to the exact
    population statistics of its inputs (precise BN).

    The moving mean and variance that batch normalization uses in inference
    are exponential averages over training batches: they lag behind the
    weights, and with a momentum close to 1 they may barely have moved from
    their initial values when training stops. `recalibrate` replaces them by
    the exact pooled mean and (biased, as Keras records it) variance of the
    inputs each layer receives over `steps` batches of `data`, as fvcore's
    `PreciseBN` and PyTorch's `swa_utils.update_bn` do.

    Every batch normalization layer found by `bn_keras.find_batchnorm` is
    recalibrated: Keras's and bn-keras's, including those in nested models,
    ghost batch normalization (whose inference ignores ghost batches) and
    batch renormalization. For renorm layers `moving_stddev` is set to
    `sqrt(variance + epsilon)` as Keras keeps it, and `renorm_mean` and
    `renorm_stddev` are set to the same population statistics, so that with
    unclipped `r` and `d` the training transform equals the new inference
    transform. Gamma, beta and `renorm_step` are left unchanged.

    **Order.** In inference, a layer's input depends on the moving
    statistics of the batch normalization layers before it (in training it
    depends on their batch statistics instead). So that each layer gets the
    statistics of the inputs it will see in inference, the layers are
    recalibrated one at a time, in the order the forward pass reaches them:
    for each, the model runs in inference mode over the batches (the pass
    stops at that layer) with every earlier layer already recalibrated. This
    costs one (partial) pass over the batches per layer; the forward passes
    run eagerly. Inputs masked out by a Keras mask are left out of the
    statistics.

    Args:
        model: A Keras model (or layer) containing batch normalization
            layers.
        data: The batches to compute statistics over: arrays (a NumPy array
            or tensor, a dict or list of them for several inputs, or a
            tuple `(x, y)` whose `y` is ignored) split into batches of
            `batch_size`; or a `tf.data.Dataset`, a `keras.utils.PyDataset`
            or an iterable of batches, each `x`, `(x, y)` or
            `(x, y, sample_weight)`. A one-shot iterator (a generator) is
            read once and its first `steps` batches are kept in memory for
            the later passes.
        steps: Positive integer: the number of batches to use, fewer if
            `data` runs out first. Defaults to `200`.
        batch_size: Batch size for array data. Defaults to `32`.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((4,)),
    ...     keras.layers.Dense(8),
    ...     bn_keras.layers.BatchNormalization(),
    ... ])
    >>> x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    >>> bn_keras.recalibrate(model, x, steps=2, batch_size=32)
    >>> h = model.layers[0](x).numpy()
    >>> bool(np.allclose(model.layers[1].moving_mean.numpy(), h.mean(axis=0),
    ...                  atol=1e-5))
    True
    """
    steps = check_steps(steps)
    start = batch_source(data, batch_size)
    pending = find_batchnorm(model)
    while pending:
        moments = {}
        num_batches = 0
        for x in start():
            with record_inputs(pending, stop=True) as calls:
                try:
                    model(x, training=False)
                except StopForward:
                    pass
            num_batches += 1
            if calls:
                layer, inputs, mask = calls[0]
                rows, weights = channels_last_2d(layer, inputs, mask)
                moments.setdefault(id(layer), (layer, PooledMoments()))
                moments[id(layer)][1].add(rows, weights)
            if num_batches >= steps:
                break
        if num_batches == 0:
            raise ValueError(
                "Argument `data` yielded no batch; `recalibrate` needs at "
                f"least one. Received: data of type {type(data).__name__}"
            )
        if not moments:
            names = [layer.name for layer in pending]
            warnings.warn(
                "recalibrate: the forward pass of the model never called the "
                f"batch normalization layers {names}; their statistics are "
                "left unchanged.",
                stacklevel=2,
            )
            return
        for layer, pooled in moments.values():
            if pooled.mean is not None:
                set_statistics(layer, pooled.mean, pooled.variance)
            pending.remove(layer)
