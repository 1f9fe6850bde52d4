"""`BatchNormalization`'s fast path on TensorFlow: the fused kernel.

TensorFlow's `FusedBatchNormV3` normalizes a rank-4 tensor several times
faster than the composite ops of the general (`keras.ops`) path. This module
runs the layer on it wherever it gives the same result, renorm and ghost
batches included. It is TensorFlow-only and kept apart from the layer, as
Keras keeps its backend kernels (`keras/src/backend/*/nn.py`) apart from its
layers: `bn_keras/layers/batch_normalization.py` reads as the layer on every
backend, and this module is where TensorFlow is imported (only when called,
which happens only on the TensorFlow backend).

The functions take the layer: the fused path shares the layer's derived
shapes, its renorm correction, its pooling of ghost-batch statistics and its
statistics update with the general path, so that both compute the same.
"""

import math

import keras
from keras import ops

# Equal ghost batches of at least this many values, of a batch size known
# when tracing, get a fused-kernel call each; smaller ones take the general
# path (measured on CPU: at 32x32x32x32 values per ghost, one call each took
# 0.7x the time of the fused kernel on the transposed layout, and 0.55x the
# general path's; at 32x512, 1.8x and 2x, and the general path 0.98x the
# transposed layout's).
SLICED_GHOST_SIZE = 2**16


def in_xla_context():
    """Whether TensorFlow is tracing for XLA (`jit_compile=True`).

    XLA compiles the general path to faster code than TensorFlow's fused
    kernel (and cannot compile the fused ghost layout's run-time choice), so
    the fused kernel is left out there. TensorFlow has no public API for
    this; if the private one moves, assume XLA, which is always correct, only
    slower.
    """
    try:
        import tensorflow as tf
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # pragma: no cover
        return True
    try:
        return control_flow_util.GraphOrParentsInXlaContext(
            tf.compat.v1.get_default_graph()
        )
    except Exception:  # noqa: BLE001  # pragma: no cover - a moved private API
        return True


def fusable(layer, x, training):
    """Whether the fused kernel computes exactly what `layer.call` would."""
    if layer.fused is False or keras.backend.backend() != "tensorflow":
        return False
    if not isinstance(training, bool):
        return False  # a tensor flag: the general path selects per call
    if training and layer.synchronized:
        return False
    if x.dtype != "float32":
        return False
    rank = len(x.shape)
    if rank < 2 or layer._channel_axis not in (1, rank - 1):
        return False
    if training and layer.virtual_batch_size is not None:
        groups = layer._num_groups(x, True)
        sample_shape = x.shape[1:]
        if (
            groups is not None
            and groups > 1
            and None not in sample_shape
            and layer.virtual_batch_size * math.prod(sample_shape)
            < SLICED_GHOST_SIZE
        ):
            # Small equal ghost batches: the general path's grouped
            # view beats the fused kernel's transposed layout.
            return False
    # Under XLA the general path compiles to faster code (and XLA cannot
    # compile the fused ghost layout's data-dependent choice).
    return not in_xla_context()


def fused_call(layer, x, training):
    """The layer's output through the fused kernel; updates the statistics
    in training, as the general path does."""
    import tensorflow as tf  # only reachable on the TensorFlow backend

    dtype = x.dtype
    channels = layer._broadcast_shape[layer._channel_axis]
    gamma = (
        ops.cast(layer.gamma, dtype)
        if layer.scale
        else tf.ones([channels], dtype)
    )
    beta = (
        ops.cast(layer.beta, dtype)
        if layer.center
        else tf.zeros([channels], dtype)
    )
    if not training:
        mean, variance = layer._moving_statistics(dtype)
        return batch_norm(
            x, gamma, beta, layer.epsilon, layer._channel_axis, mean, variance
        )[0]
    if layer.virtual_batch_size is None:
        y, mean, variance = _renormed(layer, x, gamma, beta)
    else:
        y, mean, variance = _ghosts(layer, x, gamma, beta)
    layer._update_statistics(mean, variance, True)
    return y


def batch_norm(
    x, scale, offset, epsilon, channel_axis, mean=None, variance=None
):
    """Runs FusedBatchNormV3 on `x` viewed as a rank-4 tensor.

    Normalizes with `mean` and `variance` when given, else (training) with
    the batch's. Returns `(y, mean, variance)`; in training, the batch mean
    and the biased batch variance (the kernel's own is Bessel-corrected).

    The op is called as it is (`tf.raw_ops`), with the layer's epsilon,
    whatever its size: TensorFlow's Python wrapper once raised epsilons
    below 1.001e-5 to that value (cuDNN's minimum before cuDNN 7.5, which
    lowered it to 0), as tf-keras's fused path did. The kernel computes
    with any positive epsilon, on CPU and with cuDNN alike.
    """
    import tensorflow as tf  # only reachable on the TensorFlow backend

    rank = len(x.shape)
    channels = x.shape[channel_axis] or tf.shape(x)[channel_axis]
    channels_last = channel_axis == rank - 1
    shape = tf.shape(x)
    if rank == 4:
        x4 = x
    elif channels_last:
        x4 = tf.reshape(x, [-1, 1, 1, channels])
    else:
        x4 = tf.reshape(x, [shape[0], channels, -1, 1])
    training = mean is None
    empty = tf.constant([], x.dtype)
    y, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
        x=x4,
        scale=scale,
        offset=offset,
        mean=empty if training else mean,
        variance=empty if training else variance,
        epsilon=epsilon,
        exponential_avg_factor=1.0,
        data_format="NHWC" if channels_last else "NCHW",
        is_training=training,
    )
    if training:
        count = tf.cast(tf.size(x4) // channels, variance.dtype)
        variance = variance * tf.maximum(count - 1.0, 1.0) / count
    if rank != 4:
        y = tf.reshape(y, shape)
    return y, mean, variance


def _renormed(layer, x, gamma, beta, channel_axis=None):
    """Fused training transform of one (ghost) batch, renorm included.

    With renorm, `gamma * (x_hat * r + d) + beta` is computed from the
    kernel's `y = gamma * x_hat + beta` as `r * y + (gamma * d + beta -
    r * beta)`, with no gradient through `r` and `d`. `channel_axis`
    overrides the layer's for an `x` that is already a rank-4 view (ghost
    batches).
    """
    y, mean, variance = batch_norm(
        x,
        gamma,
        beta,
        layer.epsilon,
        layer._channel_axis if channel_axis is None else channel_axis,
    )
    if layer.renorm:
        # Per (ghost, channel) in the ghost view: (G * C,) -> (G, C).
        channels = layer._broadcast_shape[layer._channel_axis]
        r, d = layer._renorm_correction(
            ops.reshape(mean, (-1, channels)),
            ops.reshape(variance, (-1, channels)),
        )
        r = ops.reshape(ops.stop_gradient(r), (-1,))
        d = ops.reshape(ops.stop_gradient(d), (-1,))
        shift = gamma * d + beta - r * beta
        if channel_axis is None:
            broadcast = layer._broadcast_shape
        else:  # the rank-4 view of ghost batches
            broadcast = [1, 1, 1, 1]
            broadcast[channel_axis] = -1
        y = y * ops.reshape(r, broadcast) + ops.reshape(shift, broadcast)
    return y, mean, variance


def _ghosts(layer, x, gamma, beta):
    """Ghost batches through the fused kernel.

    Used when the batch divides into equal ghost batches (decided at run
    time when the batch size is unknown at trace time); otherwise the
    general path runs. Ghost batches of a batch size known when tracing get
    one kernel call each, on slices of the batch (which TensorFlow takes
    without a copy); with the batch size unknown, one call normalizes them
    all (see `_chunked`). Returns the output and the pooled statistics.
    """
    import tensorflow as tf  # only reachable on the TensorFlow backend

    def sliced(num_ghosts):
        results = [
            _renormed(layer, ghost, gamma, beta)
            for ghost in tf.split(x, num_ghosts, axis=0)
        ]
        y, means, variances = zip(*results)
        return (
            tf.concat(y, 0),
            *_pooled(layer, tf.stack(means), tf.stack(variances)),
        )

    if x.shape[0] is not None:
        groups = layer._num_groups(x, True)
        if groups is None:  # unequal ghost batches
            return layer._general_ghosts(x)
        if groups == 1:
            return _renormed(layer, x, gamma, beta)
        # Small equal ghost batches of a known size took the general
        # path instead (see `fusable`).
        return sliced(groups)
    # An empty batch (a replica's share of a partial last batch under a
    # distribution strategy) has no ghost batches to chunk.
    shape = tf.shape(x)
    return tf.cond(
        tf.logical_and(
            tf.equal(shape[0] % layer.virtual_batch_size, 0), shape[0] > 0
        ),
        lambda: _chunked(layer, x, gamma, beta),
        lambda: layer._general_ghosts(x),
    )


def _chunked(layer, x, gamma, beta):
    """Equal ghost batches in one kernel call.

    The `G` ghost batches of `m` samples become `G * C` channels of a batch
    of `m` samples (a transpose there and back), so that one kernel call
    normalizes every ghost batch; r and d are then per (ghost, channel).
    """
    import tensorflow as tf  # only reachable on the TensorFlow backend

    size = layer.virtual_batch_size
    channels = layer._broadcast_shape[layer._channel_axis]
    channels_last = layer._channel_axis == len(x.shape) - 1
    if channels_last:  # (G, m, S, C) -> (m, S, G, C)
        ghosts = tf.reshape(x, [-1, size, tf.size(x[0]) // channels, channels])
        ghosts = tf.transpose(ghosts, [1, 2, 0, 3])
        wide = tf.reshape(ghosts, [size, -1, 1, tf.size(ghosts[0, 0])])
    else:  # (G, m, C, S) -> (m, G, C, S)
        ghosts = tf.reshape(x, [-1, size, channels, tf.size(x[0]) // channels])
        ghosts = tf.transpose(ghosts, [1, 0, 2, 3])
        wide = tf.reshape(ghosts, [size, -1, tf.size(x[0]) // channels, 1])
    num_ghosts = tf.shape(ghosts)[2 if channels_last else 1]
    y, mean, variance = _renormed(
        layer,
        wide,
        tf.tile(gamma, [num_ghosts]),
        tf.tile(beta, [num_ghosts]),
        channel_axis=3 if channels_last else 1,
    )
    y = tf.reshape(y, tf.shape(ghosts))
    y = tf.transpose(y, [2, 0, 1, 3] if channels_last else [1, 0, 2, 3])
    return (
        tf.reshape(y, tf.shape(x)),
        *_pooled(
            layer,
            tf.reshape(mean, [-1, channels]),
            tf.reshape(variance, [-1, channels]),
        ),
    )


def _pooled(layer, means, variances):
    """Pooled statistics of equal-size ghost batches, `(G, C)` each."""
    # Equal counts: a count of 1 each weighs them alike, and makes each
    # variance its sum of squares.
    return layer._pooled(means, variances, ops.ones_like(means))
