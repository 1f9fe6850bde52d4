"""Exact population statistics for the batch normalization layers of a
model (precise BN)."""

from __future__ import annotations

import warnings
from typing import Any

import keras

from bn_keras._statistics import set_statistics
from bn_keras.models._passes import BatchNormRunner
from bn_keras.models._passes import layer_moments
from bn_keras.models._passes import recalibration_passes
from bn_keras.models._tracing import PooledMoments
from bn_keras.models._tracing import StopForward
from bn_keras.models._tracing import batch_source
from bn_keras.models._tracing import check_steps
from bn_keras.models._tracing import record_inputs
from bn_keras.models.find_batchnorm import find_batchnorm

#: The algorithms of `recalibrate(method=...)`.
METHODS = ("two-pass", "one-pass", "layerwise")


def check_method(method):
    if method not in METHODS:
        raise ValueError(
            f"Argument `method` must be one of {list(METHODS)}. "
            f"Received: method={method!r}"
        )
    return method


def recalibrate(
    model: keras.Model,
    data: Any,
    steps: int = 200,
    batch_size: int | None = None,
    method: str = "two-pass",
) -> None:
    """Sets each batch normalization layer's moving statistics to the exact
    population statistics of its inputs (precise BN).

    The moving mean and variance that batch normalization uses in inference
    are exponential averages over training batches: they lag behind the
    weights, and with a momentum close to 1 they may barely have moved from
    their initial values when training stops. `recalibrate` replaces them by
    the pooled mean and (biased, as Keras records it) variance of all the
    values each layer receives over `steps` batches of `data`. fvcore's
    `PreciseBN` and PyTorch's `swa_utils.update_bn` estimate the same
    statistics from per-batch means and variances (the pooled mean; their
    variance averages the batches' variances, so it leaves out how far the
    batch means spread); `recalibrate` pools the moments of all values.

    Every batch normalization layer found by `bn_keras.find_batchnorm` is
    recalibrated: Keras's and bn-keras's, including those in nested models,
    ghost batch normalization (whose inference ignores ghost batches) and
    batch renormalization. For renorm layers `moving_stddev` is set to
    `sqrt(variance + epsilon)` as Keras keeps it, and `renorm_mean` and
    `renorm_stddev` are set to the same population statistics, so that with
    unclipped `r` and `d` the training transform equals the new inference
    transform. Gamma, beta and `renorm_step` are left unchanged. Inputs
    masked out by a Keras mask are left out of the statistics; a layer
    called several times in a forward pass pools the inputs of every call.

    **Algorithms.** In inference, a layer's input depends on the moving
    statistics of the batch normalization layers before it, so the exact
    statistics of a layer are those of its inputs when every earlier layer
    already has its own exact statistics. `method` chooses how close to
    get, and at what cost:

    - `"two-pass"` (the default): two compiled passes over the batches. In
      the first, every layer normalizes by its own batch's mean and
      variance (as in training, but without ghost batches or renorm
      corrections, and with dropout off) while the moments of its inputs
      are pooled: fvcore's and PyTorch's algorithm, with exact pooling
      instead of an average of per-batch statistics. The layers whose
      inputs depend on no other batch normalization layer (the first ones)
      now have their exact statistics. In the second pass these layers run
      in inference with them and the others normalize by their batch
      again: the layers right after the first ones get their exact
      statistics too, and deeper layers the batch-normalized estimate with
      exact first layers. A full second pass in inference for every layer
      is not used: small errors of the first estimates grow from layer to
      layer in deep networks (on a trained MobileNetV2, such a pass moved
      the predictions further from the exact statistics' than the first
      estimate was), while normalizing by the batch keeps each layer's
      output normalized whatever the errors before it.
    - `"one-pass"`: the first pass only.
    - `"layerwise"`: exact. The layers are recalibrated one at a time, in
      the order the forward pass reaches them: for each, the model runs in
      inference over the batches (eagerly, the pass stopping at that layer)
      with every earlier layer already recalibrated. One partial pass per
      layer, tens of times the cost of the others on a network with dozens
      of batch normalization layers.

    The estimates of `"two-pass"` and `"one-pass"` differ from the exact
    statistics of deep layers by the noise of normalizing by batches (less
    with larger batches); their predictions match those of the exact
    statistics within the noise of recalibration itself (see the speed
    and diagnosis pages of the documentation for measurements).

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
        method: `"two-pass"`, `"one-pass"` or `"layerwise"` (see
            **Algorithms**). Defaults to `"two-pass"`.

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
    check_method(method)
    start = batch_source(data, batch_size)
    layers = find_batchnorm(model)
    if method == "layerwise":
        _layerwise(model, layers, start, steps, data)
        return
    if not layers:
        return
    runner = BatchNormRunner(model, layers)
    for transforms in recalibration_passes(model, layers, method):
        result = runner.run(start(), transforms, steps)
        _check_batches(result.num_batches, data)
        _set_all(layers, result.pooled)
    _warn_missing(
        [
            layer.name
            for layer, called in zip(layers, result.called)
            if not called
        ]
    )


def _check_batches(num_batches, data):
    if num_batches == 0:
        raise ValueError(
            "Argument `data` yielded no batch; `recalibrate` needs at "
            f"least one. Received: data of type {type(data).__name__}"
        )


def _set_all(layers, pooled):
    """Sets each layer's statistics from `pooled` (one `PooledMoments` per
    layer, or `None` to leave the layer as it is)."""
    for layer, moments in zip(layers, pooled):
        if moments is not None:
            set_statistics(layer, moments.mean, moments.variance)


def _warn_missing(missing):
    if missing:
        warnings.warn(
            "recalibrate: the forward pass of the model never called the "
            f"batch normalization layers {missing}; their statistics are "
            "left unchanged.",
            stacklevel=3,
        )


def _layerwise(model, layers, start, steps, data):
    """The exact algorithm: one partial eager pass per layer."""
    pending = list(layers)
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
                moments.setdefault(id(layer), (layer, PooledMoments()))
                moments[id(layer)][1].add_moments(
                    *layer_moments(layer, inputs, mask)
                )
            if num_batches >= steps:
                break
        _check_batches(num_batches, data)
        if not moments:
            _warn_missing([layer.name for layer in pending])
            return
        for layer, pooled in moments.values():
            if pooled.mean is not None:
                set_statistics(layer, pooled.mean, pooled.variance)
            pending.remove(layer)
