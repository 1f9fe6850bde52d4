"""Tracing what batch normalization layers receive, and pooling it.

Shared by `bn_keras.recalibrate`, `bn_keras.callbacks.PreciseBN` and
`bn_keras.callbacks.BatchNormMonitor`: recording a layer's inputs during a
forward pass, turning them into rows of channels, pooling exact moments
over batches, and the sources of batches that recalibration reads.
"""

import contextlib

import keras
import numpy as np

from bn_keras._statistics import as_float64
from bn_keras._validation import check_positive_int

DEFAULT_BATCH_SIZE = 32


class StopForward(BaseException):
    """Ends a forward pass once the wanted layer input is recorded.

    A `BaseException`, so that Keras's `except Exception` wrappers (which
    rewrite error messages) let it through untouched.
    """


@contextlib.contextmanager
def record_inputs(layers, stop=False):
    """Records what each of `layers` receives during eager forward passes.

    Inside the context, calling one of `layers` appends
    `(layer, inputs, mask)` to the yielded list, then runs the layer as
    usual, or, with `stop=True`, ends the forward pass with `StopForward`.
    The layers' own `call` methods are restored on exit.
    """
    calls = []
    for layer in layers:

        def call(inputs, *args, _layer=layer, _call=layer.call, **kwargs):
            calls.append((_layer, inputs, kwargs.get("mask")))
            if stop:
                raise StopForward()
            return _call(inputs, *args, **kwargs)

        # `object.__setattr__` keeps Keras's attribute tracking out of it.
        object.__setattr__(layer, "call", call)
    try:
        yield calls
    finally:
        for layer in layers:
            if "call" in vars(layer):
                object.__delattr__(layer, "call")


def channels_last_2d(layer, inputs, mask):
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


class PooledMoments:
    """Exact mean and (biased) variance of rows added batch by batch.

    Chan et al.'s pairwise update in float64: no catastrophic cancellation,
    whatever the number of batches.
    """

    def __init__(self):
        self.count = 0.0
        self.mean = None
        self.m2 = None

    def add(self, rows, weights=None):
        """Adds `(N, C)` rows of values (with per-row weights, or None)."""
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
        self._merge(count, mean, m2)

    def add_moments(self, count, mean, variance):
        """Adds groups of values known by their moments: `count`, `mean`
        and biased `variance` per channel, arrays of shape `(G, C)` (or
        `(C,)`), merged in float64. Groups of count 0 are left out."""
        count, mean, variance = (
            np.atleast_2d(as_float64(value))
            for value in (count, mean, variance)
        )
        total = count.sum(axis=0)
        if not np.any(total > 0):
            return
        safe = np.where(total > 0, total, 1.0)
        pooled = (count * mean).sum(axis=0) / safe
        m2 = (count * (variance + np.square(mean - pooled))).sum(axis=0)
        self._merge(total, pooled, m2)

    def _merge(self, count, mean, m2):
        if self.mean is None:
            self.count, self.mean, self.m2 = count, mean, m2
            return
        total = self.count + count
        delta = mean - self.mean
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(total > 0, count / total, 0.0)
            self.mean = self.mean + delta * share
            self.m2 = self.m2 + m2 + np.square(delta) * self.count * share
        self.count = total

    @property
    def variance(self):
        return self.m2 / self.count


def is_array_like(data):
    leaves = keras.tree.flatten(data)
    return bool(leaves) and all(
        hasattr(leaf, "shape") and hasattr(leaf, "dtype") and len(leaf.shape)
        for leaf in leaves
    )


def model_inputs(element):
    """`x` of an `x`, `(x,)`, `(x, y)` or `(x, y, sample_weight)` element."""
    if isinstance(element, tuple):
        return keras.utils.unpack_x_y_sample_weight(element)[0]
    return element


def inputs_and_targets(element):
    """`(x, y)` of such an element; `y` is `None` when it has none."""
    if isinstance(element, tuple):
        return keras.utils.unpack_x_y_sample_weight(element)[:2]
    return element, None


def _array_source(data, batch_size, pick):
    x, y = inputs_and_targets(data)
    size = batch_size or DEFAULT_BATCH_SIZE
    num_samples = int(keras.tree.flatten(x)[0].shape[0])

    def batch(begin):
        def cut(values):
            end = begin + size
            return keras.tree.map_structure(lambda a: a[begin:end], values)

        if pick is model_inputs:
            return cut(x)
        return cut(x), None if y is None else cut(y)

    def start():
        for begin in range(0, num_samples, size):
            yield batch(begin)

    return start


def batch_source(data, batch_size, targets=False):
    """Returns a function that starts a new pass over the batches.

    Each batch is its inputs `x`, or with `targets=True` a pair `(x, y)`
    (`y` is `None` for data without targets). Every pass yields the same
    batches, except for sources that reshuffle themselves (such as a
    `tf.data.Dataset` with shuffling): each pass then sees the batches the
    source gives it.
    """
    check_positive_int("batch_size", batch_size, allow_none=True)
    pick = inputs_and_targets if targets else model_inputs
    if is_array_like(model_inputs(data)):
        return _array_source(data, batch_size, pick)
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
                yield pick(data[index])
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
                yield pick(element)

        return start
    # A one-shot iterator (a generator, say): keep the batches it gave so
    # that later passes see the same ones.
    seen = []

    def start():
        yield from seen
        for element in iterator:
            seen.append(pick(element))
            yield seen[-1]

    return start


def check_steps(steps):
    return check_positive_int("steps", steps)
