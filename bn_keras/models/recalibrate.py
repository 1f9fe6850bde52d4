"""Exact population statistics for the batch normalization layers of a
model (precise BN)."""

import contextlib
import warnings

import keras
import numpy as np

from bn_keras._validation import check_positive_int
from bn_keras.models.find_batchnorm import find_batchnorm

_DEFAULT_BATCH_SIZE = 32


class _StopForward(BaseException):
    """Ends a forward pass once the wanted layer input is recorded.

    A `BaseException`, so that Keras's `except Exception` wrappers (which
    rewrite error messages) let it through untouched.
    """


@contextlib.contextmanager
def _record_inputs(layers, stop=False):
    """Records what each of `layers` receives during eager forward passes.

    Inside the context, calling one of `layers` appends
    `(layer, inputs, mask)` to the yielded list, then runs the layer as
    usual, or, with `stop=True`, ends the forward pass with `_StopForward`.
    The layers' own `call` methods are restored on exit.
    """
    calls = []
    for layer in layers:

        def call(inputs, *args, _layer=layer, _call=layer.call, **kwargs):
            calls.append((_layer, inputs, kwargs.get("mask")))
            if stop:
                raise _StopForward()
            return _call(inputs, *args, **kwargs)

        # `object.__setattr__` keeps Keras's attribute tracking out of it.
        object.__setattr__(layer, "call", call)
    try:
        yield calls
    finally:
        for layer in layers:
            if "call" in vars(layer):
                object.__delattr__(layer, "call")


def _channels_last_2d(layer, inputs, mask):
    """Layer inputs as float64 `(N, C)` rows, and per-row weights or None."""
    x = np.asarray(keras.ops.convert_to_numpy(inputs), dtype=np.float64)
    axis = layer.axis % x.ndim
    x = np.moveaxis(x, axis, -1)
    rows = x.reshape(-1, x.shape[-1])
    if mask is None:
        return rows, None
    weights = np.asarray(keras.ops.convert_to_numpy(mask), dtype=np.float64)
    # The mask covers every axis but the features axis (Keras's convention).
    weights = np.broadcast_to(weights, x.shape[:-1])
    return rows, weights.reshape(-1)


class _PooledMoments:
    """Exact mean and (biased) variance of rows added batch by batch.

    Chan et al.'s pairwise update in float64: no catastrophic cancellation,
    whatever the number of batches.
    """

    def __init__(self):
        self.count = 0.0
        self.mean = None
        self.m2 = None

    def add(self, rows, weights=None):
        if weights is None:
            count = float(rows.shape[0])
            if count == 0:
                return
            mean = rows.mean(axis=0)
            m2 = np.square(rows - mean).sum(axis=0)
        else:
            count = float(weights.sum())
            if count == 0:
                return
            w = weights[:, None]
            mean = (w * rows).sum(axis=0) / count
            m2 = (w * np.square(rows - mean)).sum(axis=0)
        if self.mean is None:
            self.count, self.mean, self.m2 = count, mean, m2
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.m2 = self.m2 + m2 + np.square(delta) * (self.count * count / total)
        self.count = total

    @property
    def variance(self):
        return self.m2 / self.count


def _is_array_like(data):
    leaves = keras.tree.flatten(data)
    return bool(leaves) and all(
        hasattr(leaf, "shape") and hasattr(leaf, "dtype") and len(leaf.shape)
        for leaf in leaves
    )


def _model_inputs(element):
    """`x` of an `x`, `(x,)`, `(x, y)` or `(x, y, sample_weight)` element."""
    if isinstance(element, tuple):
        return keras.utils.unpack_x_y_sample_weight(element)[0]
    return element


def _batch_source(data, batch_size):
    """Returns a function that starts a new pass over the batches' inputs.

    Every pass yields the same batches, except for sources that reshuffle
    themselves (such as a `tf.data.Dataset` with shuffling): each pass then
    sees the batches the source gives it.
    """
    check_positive_int("batch_size", batch_size, allow_none=True)
    if _is_array_like(_model_inputs(data)):
        x = _model_inputs(data)
        size = batch_size or _DEFAULT_BATCH_SIZE
        num_samples = int(keras.tree.flatten(x)[0].shape[0])

        def start():
            for begin in range(0, num_samples, size):
                yield keras.tree.map_structure(
                    lambda a: a[begin : begin + size], x
                )

        return start
    if batch_size is not None:
        raise ValueError(
            "Argument `batch_size` only applies to data given as arrays; "
            "datasets, PyDatasets and generators yield batches already. "
            f"Received: batch_size={batch_size}, data of type "
            f"{type(data).__name__}"
        )
    if isinstance(data, keras.utils.PyDataset):

        def start():
            index = 0
            while data.num_batches is None or index < data.num_batches:
                yield _model_inputs(data[index])
                index += 1

        return start
    try:
        iterator = iter(data)
    except TypeError:
        raise TypeError(
            "Argument `data` must be arrays (a NumPy array or tensor, a dict "
            "or list of them, or a tuple `(x, y)`), a `tf.data.Dataset`, a "
            "`keras.utils.PyDataset` or an iterable of batches. "
            f"Received: data of type {type(data).__name__}"
        ) from None
    if iterator is not data:  # re-iterable: start afresh every pass

        def start():
            for element in data:
                yield _model_inputs(element)

        return start
    # A one-shot iterator (a generator, say): keep the batches it gave so
    # that later passes see the same ones.
    seen = []

    def start():
        yield from seen
        for element in iterator:
            seen.append(_model_inputs(element))
            yield seen[-1]

    return start


def _check_steps(steps):
    return check_positive_int("steps", steps)


def _assign_statistics(layer, mean, variance):
    """Sets the layer's inference statistics to `mean` and `variance`."""
    layer.moving_mean.assign(mean.astype(np.float32))
    layer.moving_variance.assign(variance.astype(np.float32))
    if layer.renorm:
        stddev = np.sqrt(variance + layer.epsilon).astype(np.float32)
        layer.moving_stddev.assign(stddev)
        # The renorm statistics are what r and d correct the batch towards;
        # pointing them at the population statistics keeps the unclipped
        # training transform equal to the inference transform.
        layer.renorm_mean.assign(mean.astype(np.float32))
        layer.renorm_stddev.assign(stddev)


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
    steps = _check_steps(steps)
    start = _batch_source(data, batch_size)
    pending = find_batchnorm(model)
    while pending:
        moments = {}
        num_batches = 0
        for x in start():
            with _record_inputs(pending, stop=True) as calls:
                try:
                    model(x, training=False)
                except _StopForward:
                    pass
            num_batches += 1
            if calls:
                layer, inputs, mask = calls[0]
                rows, weights = _channels_last_2d(layer, inputs, mask)
                moments.setdefault(id(layer), (layer, _PooledMoments()))
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
                _assign_statistics(layer, pooled.mean, pooled.variance)
            pending.remove(layer)
