"""Compiled passes over batches with every batch normalization layer
instrumented.

Shared by `bn_keras.recalibrate`, `bn_keras.models.train_inference_gap`
and `bn_keras.diagnose`. A pass runs the model over batches in inference
(dropout and the like off) while each batch normalization layer

- measures the moments of the input it receives, per channel: the count,
  mean and biased variance of its values (rows that a Keras mask leaves
  out excluded), in float32 on the backend, two-pass (the mean, then the
  mean of squared deviations);
- and transforms it as its mode for the pass says:
  `"inference"`, its inference transform (moving statistics);
  `"batch"`, normalized by the moments of its own batch (the whole batch,
  whatever the layer's ghost batches or renorm corrections), then scaled
  and shifted by gamma and beta;
  `"training"`, its training transform (ghost batches, renorm's `r` and
  `d`; a layer with `trainable=False` runs in inference, as in `fit`), with
  the state update dropped: the model is left as it was.

`BatchNormRunner` compiles the instrumented model once (a `tf.function`
with an unknown batch size on TensorFlow, Keras's `predict_on_batch`
elsewhere: `jax.jit` on JAX, eager on PyTorch). The modes and the moving
statistics are variables read at every batch, so one compiled function
serves every pass, with statistics set in between. Each batch's moments
come back as NumPy arrays, pooled in float64 by `PooledMoments`.
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
    convention) leaves out are not counted.

    Returns:
        `(count, mean, variance)`: tensors of shape `(channels,)`; `count`
        is a scalar when no mask is given (every channel has as many
        values).
    """
    x = _float32(inputs)
    ndim = len(x.shape)
    axis = _channel_axis(layer, ndim)
    axes = tuple(a for a in range(ndim) if a != axis)
    if mask is None:
        mean = ops.mean(x, axis=axes)
        variance = ops.mean(
            ops.square(x - _broadcast(layer, mean, ndim)), axis=axes
        )
        return _count(x, axis), mean, variance
    w = ops.broadcast_to(
        ops.expand_dims(ops.cast(mask, "float32"), -1), ops.shape(x)
    )
    count = ops.sum(w, axis=axes)
    safe = ops.maximum(count, 1.0)
    mean = ops.sum(w * x, axis=axes) / safe
    centred = x - _broadcast(layer, mean, ndim)
    variance = ops.sum(w * ops.square(centred), axis=axes) / safe
    return count, mean, variance


def _float32(x):
    """A tensor (not a variable) of float32."""
    if isinstance(x, keras.Variable):
        x = x.value
    return x if x.dtype == "float32" else ops.cast(x, "float32")


def _count(x, axis):
    """The number of values per channel of `x`, a float32 scalar."""
    per_sample = 1
    for a, dim in enumerate(x.shape[1:], start=1):
        if a != axis:
            per_sample = (
                None
                if dim is None or per_sample is None
                else (per_sample * dim)
            )
    if per_sample is None:
        return ops.cast(ops.size(x), "float32") / x.shape[axis]
    return ops.cast(ops.shape(x)[0], "float32") * float(per_sample)


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
    offset = -mean * scale
    if layer.center:
        offset = offset + _float32(layer.beta)
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


def _instrumented_call(layer, call, by_batch, training, records, key):
    """A replacement for `layer.call` that measures and transforms.

    `by_batch` (a boolean scalar tensor) says whether the layer normalizes
    by its batch's moments, else by its moving statistics: one affine map
    per channel either way, the formula of Keras's layer, with no branch.
    Only a layer whose training transform is more than that (ghost
    batches, renorm) branches, on `training`, to its own training call.
    """

    def run(inputs, *args, **kwargs):
        moments = layer_moments(layer, inputs, kwargs.get("mask"))
        calls = sum(k.startswith(f"{key}/") for k in records)
        records[f"{key}/{calls}"] = moments

        def affine():
            mean = ops.where(by_batch, moments[1], _float32(layer.moving_mean))
            variance = ops.where(
                by_batch, moments[2], _float32(layer.moving_variance)
            )
            return _normalize(layer, inputs, mean, variance)

        if not _real_training(layer):
            return affine()
        return ops.cond(
            training,
            lambda: _training_output(layer, call, inputs, kwargs),
            affine,
        )

    return run


class _Instrumented(keras.Model):
    """The model with its batch normalization layers instrumented: returns
    the model's outputs and `{"<layer index>/<call>": moments}`."""

    def __init__(self, model, layers):
        super().__init__(name="instrumented")
        self.wrapped = model
        # Outside Keras's tracking: the model tracks the layers already.
        object.__setattr__(self, "_bn_layers", tuple(layers))
        self.modes = self.add_weight(
            shape=(max(len(layers), 1),),
            initializer="zeros",
            dtype="int32",
            trainable=False,
            name="modes",
        )

    def call(self, x):
        records = {}
        modes = ops.convert_to_tensor(self.modes)
        trainable = np.array(
            [layer.trainable for layer in self._bn_layers] or [False]
        )
        training = modes == 2
        # A trainable layer's training transform normalizes by its batch.
        by_batch = ops.logical_or(
            modes == 1, ops.logical_and(training, trainable)
        )
        for index, layer in enumerate(self._bn_layers):
            patched = _instrumented_call(
                layer,
                layer.call,
                by_batch[index],
                training[index],
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
        return outputs, records


@dataclasses.dataclass
class PassResult:
    """What one pass measured.

    `pooled[i]` pools every input of `layers[i]` over the pass (`None` for
    a layer that the forward pass never called); `batch_means[i]` (when
    kept) stacks each call's mean per channel, `(calls, C)`; `outputs`
    (when kept) lists each batch's model outputs.
    """

    pooled: list
    batch_means: list
    outputs: list
    num_batches: int


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

    def set_modes(self, transforms):
        """One transform for every layer, or a list with one per layer."""
        if isinstance(transforms, str):
            transforms = [transforms] * len(self.layers)
        codes = [TRANSFORMS.index(t) for t in transforms]
        self._model.modes.assign(np.asarray(codes or [0], dtype="int32"))

    def run(self, batches, transforms, steps=None, keep=()):
        """Runs one pass over `batches` (an iterable of model inputs), at
        most `steps` of them; `keep` may hold `"outputs"` and `"means"`.
        Returns a `PassResult`."""
        self.set_modes(transforms)
        pooled = [PooledMoments() for _ in self.layers]
        means = [[] for _ in self.layers]
        outputs = []
        num_batches = 0
        for x in batches:
            y, records = self._step(x)
            for key, (count, mean, variance) in records.items():
                index = int(key.split("/")[0])
                pooled[index].add_moments(count, mean, variance)
                if "means" in keep:
                    means[index].append(np.asarray(mean, dtype=np.float64))
            if "outputs" in keep:
                outputs.append(y)
            num_batches += 1
            if steps is not None and num_batches >= steps:
                break
        return PassResult(
            pooled=[p if p.mean is not None else None for p in pooled],
            batch_means=[np.stack(m) if m else None for m in means],
            outputs=outputs,
            num_batches=num_batches,
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
