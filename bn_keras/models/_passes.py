"""Compiled passes over batches with every batch normalization layer
instrumented.

Shared by `bn_keras.recalibrate`, `bn_keras.models.train_inference_gap`
and `bn_keras.diagnose`. A pass runs the model over batches in inference
(dropout and the like off) while each batch normalization layer
transforms its input as its mode for the pass says:

- `"inference"`, its inference transform (moving statistics);
- `"batch"`, normalized by the moments of its own batch (the whole batch,
  whatever the layer's ghost batches or renorm corrections), then scaled
  and shifted by gamma and beta;
- `"training"`, its training transform (ghost batches, renorm's `r` and
  `d`; a layer with `trainable=False` runs in inference, as in `fit`), with
  the state update dropped: the model is left as it was.

A layer that normalizes by its batch (`"batch"`, or `"training"` when
trainable) also measures the moments of the input it receives, per
channel: the count, mean and biased variance of its values (rows that a
Keras mask leaves out excluded), in float32 on the backend, two-pass (the
mean, then the mean of squared deviations). A layer in inference measures
nothing (on TensorFlow it computes nothing for it either): the passes that
only predict cost about what a `predict` does.

`BatchNormRunner` compiles the instrumented model once (a `tf.function`
with an unknown batch size on TensorFlow, Keras's `predict_on_batch`
elsewhere: `jax.jit` on JAX, eager on PyTorch). The modes and the moving
statistics are variables read at every batch, so one compiled function
serves every pass, with statistics set in between. Each batch's moments
come back as one array (every layer's channels side by side), pooled in
float64 by `PooledMoments` and split per layer at the end of the pass.
"""

import dataclasses

import keras
import numpy as np
from keras import ops

from bn_keras.models._depth import batchnorm_depths
from bn_keras.models._tracing import PooledMoments

TRANSFORMS = ("inference", "batch", "training")


def _channel_axis(layer, ndim):
    return layer.axis % ndim


def layer_moments(layer, inputs, mask=None):
    """Count, mean and biased variance of a layer's input per channel.

    Computed in float32 with `keras.ops`, two-pass (the mean, then the mean
    of squared deviations). Every axis but the layer's `axis` is reduced;
    rows that `mask` (shape: the input's without its last axis, Keras's
    convention) leaves out are not counted. An input without rows has
    count 0, mean 0 and variance 0.

    Returns:
        `(count, mean, variance)`: `count` a float32 scalar (every channel
        has as many values), `mean` and `variance` of shape `(channels,)`.
    """
    return _moments(layer, inputs, mask, ops.shape(inputs)[0])


def _moments(layer, inputs, mask, rows):
    """`layer_moments` of `inputs`, which has `rows` rows."""
    x = _float32(inputs)
    ndim = len(x.shape)
    axis = _channel_axis(layer, ndim)
    if mask is None:
        count = ops.cast(rows, "float32") * _values_per_row(x, axis)
        mean = ops.divide_no_nan(_sum_but(x, axis), count)
        squares = ops.square(x - _broadcast(layer, mean, ndim))
        return count, mean, ops.divide_no_nan(_sum_but(squares, axis), count)
    w = ops.broadcast_to(
        ops.expand_dims(ops.cast(mask, "float32"), -1), ops.shape(x)
    )
    # A mask covers every axis but the last: every channel has as many
    # values left.
    count = ops.sum(w) / x.shape[axis]
    mean = ops.divide_no_nan(_sum_but(w * x, axis), count)
    squares = w * ops.square(x - _broadcast(layer, mean, ndim))
    return count, mean, ops.divide_no_nan(_sum_but(squares, axis), count)


def _values_per_row(x, axis):
    """How many values of one channel a row of `x` holds (the product of
    its dimensions but the first and `axis`): a float, or a float32
    scalar tensor when some of them are known only at run time."""
    values = 1.0
    for a, dim in enumerate(x.shape[1:], start=1):
        if a != axis:
            if dim is None:
                dim = ops.cast(ops.shape(x)[a], "float32")
            values = values * dim
    return values


def _sum_but(x, axis):
    """The sum of `x` over every axis but `axis` (a channel axis other
    than the first): over the other axes of each row first, then over the
    rows. Two reductions: more precise in float32 than one over every
    axis, and faster on TensorFlow's CPU kernels (5.8 against 9 ms for
    32x48x48x96 values, measured 2026-12-08 on 2 cores of an Intel
    Xeon)."""
    inner = tuple(a for a in range(1, len(x.shape)) if a != axis)
    if inner:
        x = ops.sum(x, axis=inner)
    return ops.sum(x, axis=0)


def _float32(x):
    """A tensor (not a variable) of float32."""
    if isinstance(x, keras.Variable):
        x = x.value
    return x if x.dtype == "float32" else ops.cast(x, "float32")


def _broadcast(layer, values, ndim):
    """`values` of shape `(channels,)`, shaped to broadcast against the
    layer's input (as they are when the channels are its last axis)."""
    axis = _channel_axis(layer, ndim)
    if axis == ndim - 1:
        return values
    shape = [1] * ndim
    shape[axis] = -1
    return ops.reshape(values, shape)


def _normalize(layer, inputs, mean, variance):
    """`inputs` normalized by `mean` and `variance`, then scaled by gamma
    and shifted by beta, as Keras's layer computes it in inference."""
    scale = ops.rsqrt(variance + layer.epsilon)
    if layer.scale:
        scale = scale * _float32(layer.gamma)
    offset = mean * scale
    offset = (_float32(layer.beta) if layer.center else 0.0) - offset
    ndim = len(inputs.shape)
    y = _float32(inputs) * _broadcast(layer, scale, ndim)
    y = y + _broadcast(layer, offset, ndim)
    return ops.cast(y, layer.compute_dtype)


def _real_training(layer):
    """Whether the layer's training transform is other than normalizing
    by the batch's moments: ghost batches or renorm corrections."""
    return layer.trainable and (
        layer.renorm or getattr(layer, "virtual_batch_size", None)
    )


def _training_output(layer, call, inputs, kwargs):
    """The layer's training transform, its state updates dropped."""
    mapping = [(v, v.value) for v in layer.variables]
    with keras.StatelessScope(state_mapping=mapping):
        outputs = call(inputs, **{**kwargs, "training": True})
    return ops.cast(outputs, layer.compute_dtype)


def _layer_input_moments(layer, inputs, mask, by_batch):
    """`layer_moments` of what the layer receives when it normalizes by its
    batch (`by_batch`, a boolean scalar tensor), of no rows otherwise: on
    TensorFlow, a slice of all or none of the first rows (no copy), so that
    a layer in inference computes nothing for them. Elsewhere of every row
    (a batch size must be known when compiling); the pass ignores what a
    layer in inference measured."""
    shape = ops.shape(inputs)
    if keras.backend.backend() != "tensorflow":
        return _moments(layer, inputs, mask, shape[0])
    rows = shape[0] * ops.cast(by_batch, "int32")
    inputs = _first_rows(inputs, rows, shape)
    if mask is not None:
        mask = _first_rows(mask, rows, shape[: len(mask.shape)])
    return _moments(layer, inputs, mask, rows)


def _first_rows(x, rows, shape):
    """The first `rows` rows of `x`, whose shape is `shape` (static where
    known, so that the slice keeps it)."""
    return ops.slice(x, [0] * len(shape), [rows, *shape[1:]])


def _instrumented_call(layer, call, by_batch, training, records, key):
    """A replacement for `layer.call` that measures and transforms.

    `by_batch` (a boolean scalar tensor) says whether the layer normalizes
    by its batch's moments, else by its moving statistics: one affine map
    per channel either way, the formula of Keras's layer, with no branch.
    Only a layer whose training transform is more than that (ghost
    batches, renorm) branches, on `training` (a function returning the
    boolean scalar tensor), to its own training call.
    """

    def run(inputs, *args, **kwargs):
        moments = _layer_input_moments(
            layer, inputs, kwargs.get("mask"), by_batch
        )
        records.append((key, moments, inputs.shape[layer.axis]))

        def affine():
            mean = ops.where(by_batch, moments[1], _float32(layer.moving_mean))
            variance = ops.where(
                by_batch, moments[2], _float32(layer.moving_variance)
            )
            return _normalize(layer, inputs, mean, variance)

        if not _real_training(layer):
            return affine()
        return ops.cond(
            training(),
            lambda: _training_output(layer, call, inputs, kwargs),
            affine,
        )

    return run


def _stacked(records):
    """The moments of every call, `[(layer index, (count, mean,
    variance), channels)]`, as three tensors: the counts `(calls,)`, and
    the means and variances of every call's channels side by side; and
    which layer each call belongs to, with its number of channels:
    `[(layer index, channels)]`."""
    if not records:
        empty = ops.zeros((0,), "float32")
        return (empty, empty, empty), []
    moments = [r[1] for r in records]
    stacked = (
        ops.stack([count for count, _, _ in moments]),
        ops.concatenate([mean for _, mean, _ in moments]),
        ops.concatenate([variance for _, _, variance in moments]),
    )
    return stacked, [(index, channels) for index, _, channels in records]


class _Instrumented(keras.Model):
    """The model with its batch normalization layers instrumented: returns
    the model's outputs and the moments of every call of a batch
    normalization layer (`_stacked`); `layout` says whose they are."""

    def __init__(self, model, layers):
        super().__init__(name="instrumented")
        self.wrapped = model
        # Outside Keras's tracking: the model tracks the layers already.
        object.__setattr__(self, "_bn_layers", tuple(layers))
        object.__setattr__(self, "layout", None)
        self.modes = self.add_weight(
            shape=(max(len(layers), 1),),
            initializer="zeros",
            dtype="int32",
            trainable=False,
            name="modes",
        )

    def call(self, x):
        records = []
        modes = ops.convert_to_tensor(self.modes)
        trainable = np.array(
            [layer.trainable for layer in self._bn_layers] or [False]
        )
        training = modes == 2
        # A trainable layer's training transform normalizes by its batch.
        by_batch = ops.unstack(
            ops.logical_or(modes == 1, ops.logical_and(training, trainable))
        )
        for index, layer in enumerate(self._bn_layers):
            patched = _instrumented_call(
                layer,
                layer.call,
                by_batch[index],
                lambda index=index: training[index],
                records,
                index,
            )
            object.__setattr__(layer, "call", patched)
        try:
            outputs = self.wrapped(x, training=False)
        finally:
            for layer in self._bn_layers:
                if "call" in vars(layer):
                    object.__delattr__(layer, "call")
        moments, layout = _stacked(records)
        object.__setattr__(self, "layout", layout)
        return outputs, moments


@dataclasses.dataclass
class PassResult:
    """What one pass measured.

    `pooled[i]` pools every input of `layers[i]` over the pass when the
    layer normalized by its batch (`None` for a layer in inference, or one
    that the forward pass never called); `batch_means[i]` (when kept)
    stacks each such call's mean per channel, `(calls, C)`; `outputs`
    (when kept) lists each batch's model outputs; `called[i]` says whether
    the forward pass called `layers[i]`.
    """

    pooled: list
    batch_means: list
    outputs: list
    num_batches: int
    called: list


def _tf_function(runner):
    """A `tf.function` of the instrumented model for any batch size: traced
    once per structure and dtypes of inputs."""
    import tensorflow as tf

    traced = {}

    def run(x):
        leaves = keras.tree.flatten(x)
        key = tuple((str(a.dtype), tuple(a.shape)[1:]) for a in leaves)
        if key not in traced:
            signature = keras.tree.map_structure(
                lambda a: tf.TensorSpec(
                    (None, *tuple(a.shape)[1:]), tf.as_dtype(a.dtype)
                ),
                x,
            )
            traced[key] = tf.function(runner, input_signature=[signature])
        outputs = traced[key](x)
        return keras.tree.map_structure(lambda t: t.numpy(), outputs)

    return run


def _split(pooled, means, layout, measured):
    """Per layer: its `PooledMoments` (or `None`) and its stacked batch
    means (or `None`), from the pass's side-by-side arrays."""
    layers = [None] * len(measured)
    calls = [[] for _ in measured]
    offset = 0
    for index, channels in layout:
        part = slice(offset, offset + channels)
        offset += channels
        if not measured[index] or pooled.mean is None:
            continue
        if layers[index] is None:
            layers[index] = PooledMoments()
        count = pooled.count[part]
        layers[index].add_moments(
            count, pooled.mean[part], pooled.m2[part] / np.maximum(count, 1)
        )
        if means:
            calls[index].append(np.stack([m[part] for m in means]))
    return [None if p is None or p.mean is None else p for p in layers], [
        # (batches, calls, C) to (batches * calls, C), batch by batch.
        np.stack(c, axis=1).reshape(-1, c[0].shape[-1]) if c else None
        for c in calls
    ]


class BatchNormRunner:
    """Runs a model over batches with its batch normalization layers
    instrumented; compiled once, whatever the passes.

    Args:
        model: The model.
        layers: Its batch normalization layers (`find_batchnorm(model)`).
    """

    def __init__(self, model, layers):
        self.layers = list(layers)
        self._model = _Instrumented(model, self.layers)
        if keras.backend.backend() == "tensorflow":
            self._step = _tf_function(self._model)
        else:
            self._step = self._model.predict_on_batch

    def _transforms(self, transforms):
        if isinstance(transforms, str):
            transforms = [transforms] * len(self.layers)
        return list(transforms)

    def set_modes(self, transforms):
        """One transform for every layer, or a list with one per layer."""
        codes = [TRANSFORMS.index(t) for t in self._transforms(transforms)]
        self._model.modes.assign(np.asarray(codes or [0], dtype="int32"))

    def measures(self, transforms):
        """Which layers normalize by their batch, and so measure, in a pass
        of `transforms`."""
        return [
            t == "batch" or (t == "training" and layer.trainable)
            for layer, t in zip(self.layers, self._transforms(transforms))
        ]

    def run(self, batches, transforms, steps=None, keep=()):
        """Runs one pass over `batches` (an iterable of model inputs), at
        most `steps` of them; `keep` may hold `"outputs"` and `"means"`.
        Returns a `PassResult`."""
        self.set_modes(transforms)
        pooled = PooledMoments()
        means = []
        outputs = []
        num_batches = 0
        for x in batches:
            y, (counts, mean, variance) = self._step(x)
            channels = [c for _, c in self._model.layout]
            mean = np.asarray(mean, dtype=np.float64)
            pooled.add_moments(
                np.repeat(np.asarray(counts, dtype=np.float64), channels),
                mean,
                variance,
            )
            if "means" in keep:
                means.append(mean)
            if "outputs" in keep:
                outputs.append(y)
            num_batches += 1
            if steps is not None and num_batches >= steps:
                break
        layout = self._model.layout or []
        per_layer, batch_means = _split(
            pooled, means, layout, self.measures(transforms)
        )
        called = {index for index, _ in layout}
        return PassResult(
            pooled=per_layer,
            batch_means=batch_means,
            outputs=outputs,
            num_batches=num_batches,
            called=[i in called for i in range(len(self.layers))],
        )


def recalibration_passes(model, layers, method):
    """The transforms of each pass of `recalibrate(method=...)`
    (`"two-pass"` or `"one-pass"`), one per pass: every layer normalized by
    its batch; then, for `"two-pass"` and when some layers have others
    before them, the first layers (depth 1: exact after the first pass) in
    inference and the others normalized by their batch again."""
    yield "batch"
    if method == "one-pass":
        return
    depths = batchnorm_depths(model)
    first = [depths.get(id(layer)) == 1 for layer in layers]
    if any(first) and not all(first):
        yield ["inference" if f else "batch" for f in first]
