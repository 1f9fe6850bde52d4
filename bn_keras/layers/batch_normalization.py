"""A drop-in `keras.layers.BatchNormalization` with ghost batches, renorm
schedules and a guard against non-finite batches.

The layer's code is split the way Keras keeps its backend kernels
(`keras/src/backend/*/nn.py`) apart from its layers. This file is the layer
on every backend, computed with `keras.ops`. `_tf_fused.py` is its
TensorFlow-only fast path through the fused batch-norm kernel, which `call`
takes where it gives the same result. `_formulas.py` holds the ghost-batch,
renorm and moving-average formulas, which `BatchNormMonitor` also uses to
re-derive figures from the layer's weights.
"""

from __future__ import annotations

import warnings
from typing import Any

import keras
import numpy as np
from keras import ops

from bn_keras._typing import Constraint
from bn_keras._typing import Initializer
from bn_keras._typing import Regularizer
from bn_keras._validation import check_bool
from bn_keras._validation import check_fraction
from bn_keras._validation import check_positive_int
from bn_keras._validation import is_integer
from bn_keras._validation import is_number
from bn_keras.layers._formulas import clip_renorm
from bn_keras.layers._formulas import cumulative_average
from bn_keras.layers._formulas import ghost_count
from bn_keras.layers._formulas import ghost_ids
from bn_keras.layers._formulas import moving_average
from bn_keras.layers._formulas import renorm_ratios
from bn_keras.layers._tf_fused import fusable
from bn_keras.layers._tf_fused import fused_call
from bn_keras.layers.renorm_clipping import RenormClipping

_CLIPPING_KEYS = ("rmax", "rmin", "dmax")
# Keras's masked moments add this to the count; we do the same so that the
# masked statistics equal Keras's.
_MASK_COUNT_FUZZ = 1e-7
# What Keras's `__init__` is given for a momentum of `None` (it calls
# `float(momentum)`); the layer keeps `None` and never reads this value.
_KERAS_MOMENTUM = 0.99


def _check_clipping_dict(renorm_clipping):
    unknown = sorted(set(renorm_clipping) - set(_CLIPPING_KEYS))
    if unknown:
        raise ValueError(
            "Argument `renorm_clipping` accepts only the keys "
            f"{list(_CLIPPING_KEYS)} (or a `bn_keras.layers.RenormClipping` "
            f"schedule); unknown keys {unknown}. "
            f"Received: renorm_clipping={renorm_clipping}"
        )
    clipping = {}
    for key, value in renorm_clipping.items():
        if value is None:
            continue
        if not is_number(value):
            raise TypeError(
                f"`renorm_clipping['{key}']` must be a number. "
                f"Received: renorm_clipping={renorm_clipping}"
            )
        clipping[key] = float(value)
    rmax, rmin = clipping.get("rmax"), clipping.get("rmin")
    if rmax is not None and rmin is not None and rmax < rmin:
        raise ValueError(
            "In `renorm_clipping`, rmax must be greater than or equal to "
            f"rmin. Received: rmax={rmax}, rmin={rmin}"
        )
    if clipping.get("dmax", 0.0) < 0:
        raise ValueError(
            "In `renorm_clipping`, dmax must be non-negative. "
            f"Received: dmax={clipping['dmax']}"
        )
    if rmin is not None and rmin < 0:
        raise ValueError(
            "In `renorm_clipping`, rmin must be non-negative. "
            f"Received: rmin={rmin}"
        )
    return clipping


def _standardize_clipping(renorm, renorm_clipping):
    """Returns None, a dict of floats or a `RenormClipping` schedule.

    An empty dict (no clipping) with `renorm=True` and no bounds given.
    """
    if renorm_clipping is None or isinstance(renorm_clipping, RenormClipping):
        clipping = renorm_clipping
    elif isinstance(renorm_clipping, dict) and "class_name" in renorm_clipping:
        clipping = keras.saving.deserialize_keras_object(renorm_clipping)
        if not isinstance(clipping, RenormClipping):
            raise TypeError(
                "Argument `renorm_clipping` must be a dict of floats or a "
                "`bn_keras.layers.RenormClipping`. "
                f"Received: renorm_clipping={renorm_clipping}"
            )
    elif isinstance(renorm_clipping, dict):
        clipping = _check_clipping_dict(renorm_clipping)
    else:
        raise TypeError(
            "Argument `renorm_clipping` must be None, a dict with keys "
            f"{list(_CLIPPING_KEYS)}, or a `bn_keras.layers.RenormClipping`. "
            f"Received: renorm_clipping={renorm_clipping!r}"
        )
    if clipping is not None and not renorm:
        raise ValueError(
            "Argument `renorm_clipping` only applies with `renorm=True`. "
            f"Received: renorm=False, renorm_clipping={clipping}"
        )
    if renorm and clipping is None:
        return {}
    return clipping


def _check_axis(axis):
    if not is_integer(axis):
        raise TypeError(
            "Argument `axis` must be an integer (the features axis). "
            f"Received: axis={axis!r}"
        )


def _check_epsilon(epsilon):
    if not is_number(epsilon) or not epsilon > 0:
        raise ValueError(
            "Argument `epsilon` must be a positive float. "
            f"Received: epsilon={epsilon!r}"
        )


def _check_virtual_batch_size(virtual_batch_size, axis):
    """Returns `virtual_batch_size` as an `int`, or None."""
    virtual_batch_size = check_positive_int(
        "virtual_batch_size", virtual_batch_size, allow_none=True
    )
    if virtual_batch_size is not None and axis == 0:
        raise ValueError(
            "Argument `virtual_batch_size` splits the batch axis into "
            "ghost batches, so `axis` (the features axis) cannot be "
            f"0. Received: axis={axis}, "
            f"virtual_batch_size={virtual_batch_size}"
        )
    return virtual_batch_size


def _check_synchronized(synchronized):
    if synchronized and keras.backend.backend() != "tensorflow":
        raise ValueError(
            "Argument `synchronized=True` needs the TensorFlow backend "
            "(tf.distribute); the current backend is "
            f"'{keras.backend.backend()}'. "
            f"Received: synchronized={synchronized}"
        )


def _check_fused(fused):
    if fused not in (None, True, False):
        raise ValueError(
            "Argument `fused` must be None (use the fused kernel where it "
            "applies), True or False. "
            f"Received: fused={fused!r}"
        )
    if fused and keras.backend.backend() != "tensorflow":
        raise ValueError(
            "Argument `fused=True` needs the TensorFlow backend (its "
            "fused batch-norm kernel); the current backend is "
            f"'{keras.backend.backend()}'. Received: fused={fused}"
        )


@keras.saving.register_keras_serializable(package="bn_keras")
class BatchNormalization(keras.layers.BatchNormalization):
    """Batch normalization, a drop-in for `keras.layers.BatchNormalization`.

    With Keras's arguments alone this layer creates the same weights and
    computes the same outputs and moving statistics as
    `keras.layers.BatchNormalization` (it is a subclass, so code that checks
    `isinstance(layer, keras.layers.BatchNormalization)` keeps working). It
    adds:

    - **Ghost batches** (`virtual_batch_size=m`): in training the batch is
      split into consecutive chunks of `m` samples, each normalized with its
      own mean and variance. Any batch size works: the remainder forms a
      smaller last chunk, and a last chunk of a single sample is merged into
      the chunk before it. The moving statistics are updated once per step
      with the statistics of the whole batch, so they are the same as plain
      batch normalization records, whatever `m`.
    - **Renorm schedules**: `renorm_clipping` also accepts a
      `bn_keras.layers.RenormClipping`, which relaxes `rmax` and `dmax`
      during training as in the Batch Renormalization paper. The layer then
      keeps a step counter, `renorm_step`, saved with its weights.
    - **A non-finite guard** (`skip_nonfinite=True`): a training batch whose
      mean or variance is not finite leaves every moving statistic unchanged.
    - **Cumulative statistics** (`momentum=None`, and
      `renorm_momentum=None`): the mean and variance of every value seen
      instead of an exponential moving average (see below). The layer then
      keeps a counter, `num_batches_tracked`, saved with its weights.
      PyTorch's `momentum=None` gives the same mean, but its variance is
      the average of the per-batch unbiased variances: it leaves out the
      spread between the batch means, which this one pools in.

    **During training** (`fit()`, or `training=True`) each channel is
    normalized with the statistics of the batch (or of its ghost batch):
    `gamma * (x - mean_B) / sqrt(var_B + epsilon) + beta`, and the moving
    statistics are updated as
    `moving = moving * momentum + batch_statistic * (1 - momentum)`, using the
    biased batch variance, as Keras does. With `renorm=True` the normalized
    value is corrected to `x_hat * r + d` (r and d computed per ghost batch).

    **Cumulative statistics.** With `momentum=None`, the `n`-th update
    (`n = num_batches_tracked + 1`) merges the batch's mean `mu_B` and
    biased variance `var_B` (of the whole batch, of all replicas when
    synchronized) into the statistics `M`, `V` of the `n - 1` batches
    before it, each batch weighing one (Chan et al.'s pooled update): with
    `delta = mu_B - M`,
    `M <- M + delta / n` and
    `V <- V + (var_B - V) / n + (n - 1) / n**2 * delta**2`.
    After `n` batches of equal size, `M` and `V` are exactly the mean and
    variance of every value seen (batches of unequal sizes weigh alike: a
    last, smaller batch of an epoch counts as much as the others); the
    first batch sets them whatever their initial values, and they move
    less and less as `n` grows. With `renorm=True` the standard deviations
    follow as `sqrt(V + epsilon)`. `renorm_momentum=None` applies the same
    update to the renorm statistics; the first training step, which has
    no statistics yet to renormalize towards, then uses `r = 1` and
    `d = 0` (each batch, or ghost batch, standardized by its own
    statistics). A batch skipped by `skip_nonfinite` (or a `training`
    tensor that is False) is not counted; training resumed from saved
    weights continues the average.

    When to use it: unclipped renorm with both momenta `None` normalizes
    each training batch by the statistics of all the batches before it,
    `(x - M) / sqrt(V + epsilon)`, with the gradient of batch
    normalization, which is what standardizing a model's inputs needs
    (`bn_keras.insert_batchnorm(model, input_batchnorm="renorm")`): the
    data's distribution does not change during training, so the average
    converges to the training set's statistics and its noise vanishes,
    where per-batch statistics stay noisy and a moving average keeps a
    residual noise or lags; no pass over the data is needed before
    training (unlike `keras.layers.Normalization.adapt`). Inside a network,
    where the activations' distribution changes as it trains, keep a float
    momentum: a cumulative average would give the first batches as much
    weight as the last ones.

    **During inference** (`training=False`, the default, or when the layer
    has `trainable=False`) it returns
    `gamma * (x - moving_mean) / sqrt(moving_variance + epsilon) + beta`.

    Args:
        axis: Integer, the features axis to normalize. Defaults to `-1`.
        momentum: Momentum of the moving averages, a float in `[0, 1]`
            (`1.0` freezes the moving statistics, as in Keras), or `None`
            for cumulative averages of the batch statistics (see above).
            Defaults to `0.99`.
        epsilon: Small positive float added to the variance. Defaults to
            `1e-3`.
        center: If `True`, add the offset `beta`. Defaults to `True`.
        scale: If `True`, multiply by `gamma`. Defaults to `True`.
        beta_initializer: Initializer for `beta`. Defaults to `"zeros"`.
        gamma_initializer: Initializer for `gamma`. Defaults to `"ones"`.
        moving_mean_initializer: Defaults to `"zeros"`.
        moving_variance_initializer: Defaults to `"ones"`.
        beta_regularizer: Optional regularizer for `beta`.
        gamma_regularizer: Optional regularizer for `gamma`.
        beta_constraint: Optional constraint for `beta`.
        gamma_constraint: Optional constraint for `gamma`.
        renorm: Whether to use batch renormalization. Adds the weights
            `moving_stddev`, `renorm_mean` and `renorm_stddev`, as Keras does.
            Defaults to `False`.
        renorm_clipping: With `renorm=True`, either a dict with optional keys
            `"rmax"`, `"rmin"` and `"dmax"` (fixed bounds, as in Keras; missing
            bounds do not clip), or a `bn_keras.layers.RenormClipping`
            schedule. Defaults to `None` (no clipping).
        renorm_momentum: Momentum of the renorm statistics, a float in
            `[0, 1]`, or `None` for cumulative averages (see above).
            Defaults to `0.99`.
        synchronized: If `True`, under a `tf.distribute` strategy the batch
            statistics are computed over the global batch (all replicas).
            TensorFlow backend only. Defaults to `False`.
        virtual_batch_size: Positive integer: the size of the ghost batches,
            or `None` for plain batch normalization. Under a distribution
            strategy, ghost batches are formed within each replica's batch.
            Defaults to `None`.
        skip_nonfinite: If `True`, a training batch whose mean or variance
            is NaN or infinite does not update the moving statistics.
            Defaults to `True`.
        fused: On the TensorFlow backend, whether to use TensorFlow's fused
            batch-norm kernel (FusedBatchNormV3), which is several times
            faster than the composite ops. `None` (the default) uses it
            wherever it gives the same result: a Python boolean `training`,
            no mask, no `synchronized` training, float32 inputs (after the
            upcast of mixed precision), the features axis first after the
            batch axis or last; any epsilon (PyTorch's 1e-5 included,
            computed as it is: tf-keras raised epsilons below 1.001e-5 to
            that value on its fused path); but not under XLA
            (`jit_compile=True`), which compiles the general path to faster
            code. `False` never uses it; `True` is the same as `None` but
            raises an error at construction on a backend that has no fused
            kernel.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: Input tensor of any rank.
        training: Python boolean or boolean scalar tensor: normalize with
            the batch statistics (`True`) or the moving statistics (`False`).
        mask: Optional boolean tensor of rank `inputs.ndim - 1`; masked-out
            positions are left out of the batch statistics.

    Reference:

    - [Ioffe and Szegedy, 2015](https://arxiv.org/abs/1502.03167).
    - [Ioffe, 2017](https://arxiv.org/abs/1702.03275) (batch renormalization).
    - [Hoffer et al., 2017](https://arxiv.org/abs/1705.08741) (ghost batch
      normalization).

    Example:

    >>> layer = bn_keras.layers.BatchNormalization(virtual_batch_size=4)
    >>> x = np.random.default_rng(0).normal(size=(10, 3)).astype("float32")
    >>> y = layer(x, training=True)
    >>> tuple(y.shape)
    (10, 3)
    """

    def __init__(
        self,
        axis: int = -1,
        momentum: float | None = 0.99,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        beta_initializer: Initializer = "zeros",
        gamma_initializer: Initializer = "ones",
        moving_mean_initializer: Initializer = "zeros",
        moving_variance_initializer: Initializer = "ones",
        beta_regularizer: Regularizer = None,
        gamma_regularizer: Regularizer = None,
        beta_constraint: Constraint = None,
        gamma_constraint: Constraint = None,
        renorm: bool = False,
        renorm_clipping: dict[str, float] | RenormClipping | None = None,
        renorm_momentum: float | None = 0.99,
        synchronized: bool = False,
        virtual_batch_size: int | None = None,
        skip_nonfinite: bool = True,
        fused: bool | None = None,
        **kwargs: Any,
    ) -> None:
        _check_axis(axis)
        momentum = check_fraction(
            "momentum", momentum, allow_none=True, allow_one=True
        )
        renorm_momentum = check_fraction(
            "renorm_momentum", renorm_momentum, allow_none=True, allow_one=True
        )
        _check_epsilon(epsilon)
        virtual_batch_size = _check_virtual_batch_size(virtual_batch_size, axis)
        _check_synchronized(synchronized)
        skip_nonfinite = check_bool("skip_nonfinite", skip_nonfinite)
        _check_fused(fused)
        renorm_clipping = _standardize_clipping(renorm, renorm_clipping)
        super().__init__(
            axis=int(axis),
            momentum=_KERAS_MOMENTUM if momentum is None else momentum,
            epsilon=float(epsilon),
            center=bool(center),
            scale=bool(scale),
            beta_initializer=beta_initializer,
            gamma_initializer=gamma_initializer,
            moving_mean_initializer=moving_mean_initializer,
            moving_variance_initializer=moving_variance_initializer,
            beta_regularizer=beta_regularizer,
            gamma_regularizer=gamma_regularizer,
            beta_constraint=beta_constraint,
            gamma_constraint=gamma_constraint,
            renorm=bool(renorm),
            # Keras validates dicts only; the schedule is ours to handle.
            renorm_clipping=None,
            renorm_momentum=(
                _KERAS_MOMENTUM if renorm_momentum is None else renorm_momentum
            ),
            synchronized=bool(synchronized),
            **kwargs,
        )
        self.momentum = momentum
        self.renorm_clipping = renorm_clipping
        self.renorm_momentum = renorm_momentum
        self.virtual_batch_size = virtual_batch_size
        self.skip_nonfinite = bool(skip_nonfinite)
        self.fused = fused
        self.renorm_step = None
        self.num_batches_tracked = None
        self._ghost_size_checked = False

    @property
    def renorm_schedule(self) -> RenormClipping | None:
        """The `RenormClipping` schedule, or `None` for fixed bounds."""
        if isinstance(self.renorm_clipping, RenormClipping):
            return self.renorm_clipping
        return None

    @property
    def cumulative(self) -> bool:
        """Whether some statistics are cumulative averages (a momentum of
        `None`), which the counter `num_batches_tracked` weighs."""
        return self.momentum is None or (
            self.renorm and self.renorm_momentum is None
        )

    def build(self, input_shape):
        rank = len(input_shape)
        if not -rank <= self.axis < rank:
            raise ValueError(
                f"Argument `axis` is out of range for inputs of rank {rank} "
                f"(shape {tuple(input_shape)}): expected an integer in "
                f"[{-rank}, {rank}). Received: axis={self.axis}"
            )
        self._channel_axis = self.axis % rank
        if self.virtual_batch_size is not None and self._channel_axis == 0:
            raise ValueError(
                "Argument `axis` resolves to the batch axis for inputs of "
                f"rank {rank}, which ghost batches cannot use. "
                f"Received: axis={self.axis}, "
                f"virtual_batch_size={self.virtual_batch_size}"
            )
        if input_shape[self.axis] is None:
            raise ValueError(
                "The features axis of the inputs must have a known size. "
                f"Received: input_shape={tuple(input_shape)}, axis={self.axis}"
            )
        # Keras creates the weights: same names, shapes, order and flags.
        super().build(input_shape)
        if self.renorm and self.renorm_schedule is not None:
            self.renorm_step = self._add_counter("renorm_step")
        if self.cumulative:
            self.num_batches_tracked = self._add_counter("num_batches_tracked")
        # Shapes in which per-channel (and per-sample) values broadcast.
        self._broadcast_shape = [1] * rank
        self._broadcast_shape[self._channel_axis] = input_shape[self.axis]
        self._sample_shape = list(self._broadcast_shape)
        self._sample_shape[0] = -1
        self._sample_axes = [
            a for a in range(1, rank) if a != self._channel_axis
        ]

    def _add_counter(self, name):
        """An int32 counter saved with the weights; under a distribution
        strategy every replica counts the same steps, so the first
        replica's count is the count."""
        return self.add_weight(
            shape=(),
            name=name,
            initializer="zeros",
            dtype="int32",
            trainable=False,
            autocast=False,
            aggregation="only_first_replica",
        )

    def call(self, inputs, training=None, mask=None):
        if mask is not None and len(mask.shape) != len(inputs.shape) - 1:
            raise ValueError(
                "The mask provided should be one dimension less than the "
                f"inputs. Received: mask.shape={tuple(mask.shape)}, "
                f"inputs.shape={tuple(inputs.shape)}"
            )
        # BN is prone to overflow in float16/bfloat16: compute in float32.
        compute_dtype = keras.backend.result_type(inputs.dtype, "float32")
        x = ops.cast(inputs, compute_dtype)
        weights = None
        if mask is not None:
            weights = ops.cast(
                ops.broadcast_to(ops.expand_dims(mask, -1), ops.shape(x)),
                compute_dtype,
            )
        training = self._training_flag(training)
        if training is True:
            self._warn_single_ghost(x.shape[0])
        if weights is None and fusable(self, x, training):
            outputs = fused_call(self, x, training)
        else:
            outputs = self._general_call(x, weights, training)
        return ops.cast(outputs, self.compute_dtype)

    def _warn_single_ghost(self, batch):
        """Warns when the first training batch of a known size makes a
        single ghost batch: the layer then trains as plain batch
        normalization. Later batches are not checked (a partial last batch
        of an epoch may be small without harm)."""
        size = self.virtual_batch_size
        if size is None or self._ghost_size_checked or batch is None:
            return
        self._ghost_size_checked = True
        if ghost_count(batch, size) > 1:
            return
        # The same message for every layer of these sizes: Python's default
        # warning filter shows it once, not once per layer of the model.
        warnings.warn(
            f"A batch normalization layer with virtual_batch_size={size} "
            f"received a training batch of {batch} samples: the batch forms "
            "a single ghost batch, so the layer trains as plain batch "
            "normalization. Use a virtual_batch_size of at most half the "
            "batch size (the batch of each replica under a distribution "
            "strategy), or larger training batches.",
            stacklevel=2,
        )

    # -- the keras.ops path -------------------------------------------------

    def _training_flag(self, training):
        """False, True, or a boolean scalar tensor (honoured as such)."""
        if training is None or not self.trainable:
            return False
        if isinstance(training, (bool, np.bool_, int)):
            return bool(training)
        return ops.cast(training, "bool")

    def _moving_statistics(self, dtype):
        return (
            ops.cast(self.moving_mean, dtype),
            ops.cast(self.moving_variance, dtype),
        )

    def _affine(self, mean, variance, dtype, r=None, d=None):
        """Scale and offset such that `x * scale + offset` normalizes `x`.

        `mean` and `variance` have shape `(C,)`, or `(G, C)` for ghost
        batches; `r` and `d` are the renorm corrections or None. The results
        have the same shape.
        """
        gamma = ops.cast(self.gamma, dtype) if self.scale else None
        beta = ops.cast(self.beta, dtype) if self.center else None
        if r is not None:
            # (x_hat * r + d) * gamma + beta, as Keras composes it.
            r, d = ops.stop_gradient(r), ops.stop_gradient(d)
            if gamma is None:
                gamma, beta_r = r, d
            else:
                gamma, beta_r = r * gamma, d * gamma
            beta = beta_r if beta is None else beta_r + beta
        scale = ops.rsqrt(variance + self.epsilon)
        if gamma is not None:
            scale = scale * gamma
        offset = -mean * scale
        if beta is not None:
            offset = offset + beta
        return scale, offset

    def _num_groups(self, x, training):
        """How many equal groups of samples have their own statistics.

        1 for plain batch normalization and in inference; for ghost batches,
        their number when they all have the same size and the batch size is
        known when tracing (always under JAX, usually under XLA); otherwise
        None.
        """
        size = self.virtual_batch_size
        batch = x.shape[0]
        if size is None or training is False:
            return 1
        if batch is None:
            return None
        num_ghosts = ghost_count(batch, size)
        if num_ghosts == 1 or batch == num_ghosts * size:
            return num_ghosts
        return None

    def _grouped_view(self, x, groups):
        """A view of `x` whose reductions give each group's statistics.

        Returns `(view_shape, axes, stat_shape)`: `x` reshaped to
        `view_shape` reduces over `axes` to the statistics of each group, and
        these, reshaped to `stat_shape`, broadcast against it. The view is
        `(G, A, C, P)`: G groups of the batch (no such axis for one group), A
        all other axes before the channel axis, C channels, P the axes after
        it (no such axis when there are none). XLA compiles the reductions
        of these views to faster code than reductions over several axes of
        `x` (0.65x the time of Keras's layer on TensorFlow's conv benchmark),
        and JAX's XLA to much slower code with a leading axis of size 1.
        """
        channels = self._broadcast_shape[self._channel_axis]
        after = 1
        for dim in ops.shape(x)[self._channel_axis + 1 :]:
            after = after * dim
        if isinstance(after, int) and after == 1:  # channels last
            view_shape, axes, stat_shape = (-1, channels), (0,), (1, channels)
        else:
            view_shape = (-1, channels, after)
            axes, stat_shape = (0, 2), (1, channels, 1)
        if groups == 1:
            return view_shape, axes, stat_shape
        return (
            (groups,) + view_shape,
            tuple(a + 1 for a in axes),
            (groups,) + stat_shape,
        )

    def _general_call(self, x, weights, training):
        """Output of the `keras.ops` path; updates the statistics."""
        dtype, input_shape = x.dtype, ops.shape(x)
        groups = self._num_groups(x, training)
        if groups is not None:
            view_shape, axes, stat_shape = self._grouped_view(x, groups)
            x = ops.reshape(x, view_shape)
        if training is False:
            scale, offset = self._affine(*self._moving_statistics(dtype), dtype)
        else:
            if groups is None:  # ghost batches of unequal or unknown sizes
                scale, offset, pooled_mean, pooled_variance = (
                    self._ghost_transform(x, weights)
                )
            else:
                if weights is not None:
                    weights = ops.reshape(weights, view_shape)
                mean, variance, pooled_mean, pooled_variance = (
                    self._grouped_moments(x, weights, axes, groups)
                )
                r = d = None
                if self.renorm:
                    r, d = self._renorm_correction(mean, variance)
                scale, offset = self._affine(mean, variance, dtype, r, d)
            if training is not True:
                # `training` is a tensor: the inference transform where it
                # is False, without Python control flow (works under jit).
                inference_scale, inference_offset = self._affine(
                    *self._moving_statistics(dtype), dtype
                )
                scale = ops.where(training, scale, inference_scale)
                offset = ops.where(training, offset, inference_offset)
            self._update_statistics(pooled_mean, pooled_variance, training)
        if groups is None:  # per-sample scale and offset, `(B, C)`
            shape = self._sample_shape
        else:
            shape = stat_shape
        outputs = x * ops.reshape(scale, shape) + ops.reshape(offset, shape)
        return ops.reshape(outputs, input_shape)

    def _general_ghosts(self, x):
        """Ghost-batch training output and pooled statistics, no mask."""
        scale, offset, mean, variance = self._ghost_transform(x, None)
        scale = ops.reshape(scale, self._sample_shape)
        offset = ops.reshape(offset, self._sample_shape)
        return x * scale + offset, mean, variance

    def _ghost_transform(self, x, weights):
        """Per-sample scale and offset from each sample's ghost batch.

        For ghost batches of unequal or unknown sizes. Returns `(scale,
        offset, pooled_mean, pooled_variance)`, the first two of shape
        `(B, C)`.
        """
        mean, variance, pooled_mean, pooled_variance, assign = (
            self._ghost_moments(x, weights)
        )
        r = d = None
        if self.renorm:
            r, d = self._renorm_correction(mean, variance)
        scale, offset = self._affine(mean, variance, x.dtype, r, d)
        return (
            ops.matmul(assign, scale),
            ops.matmul(assign, offset),
            pooled_mean,
            pooled_variance,
        )

    # -- statistics -----------------------------------------------------------

    def _all_reduce_sum(self, values):
        """Sums `values` (a tuple of tensors) over replicas if synchronized."""
        if not self.synchronized:
            return values
        import tensorflow as tf  # only reachable on the TensorFlow backend

        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return values
        return tuple(
            context.all_reduce(tf.distribute.ReduceOp.SUM, list(values))
        )

    def _grouped_moments(self, view, weights, axes, groups):
        """Statistics of each group of a grouped view, and of all groups.

        Returns `(mean, variance, pooled_mean, pooled_variance)`: the mean
        and biased variance by which the groups are normalized, of shape
        `(G, C)` (for plain batch normalization, those of the whole batch,
        of all replicas when synchronized), and those of the whole batch, of
        shape `(C,)`, which the moving statistics record.
        """
        dtype = view.dtype
        if weights is None:
            count = 1
            for a in axes:
                count = count * ops.shape(view)[a]
            sums = ops.sum(view, axis=axes, keepdims=True)
            counts = ops.ones_like(sums) * ops.cast(count, dtype)
        else:
            sums = ops.sum(view * weights, axis=axes, keepdims=True)
            counts = ops.sum(weights, axis=axes, keepdims=True)
            counts = counts + _MASK_COUNT_FUZZ
        # An empty batch (a replica's share of a partial last batch) gets
        # zero group statistics, so that the pooled statistics of the other
        # replicas are not NaN; its own pooled statistics are 0 / 0, NaN.
        nonzero_counts = ops.maximum(counts, 1.0)
        mean = sums / nonzero_counts
        # No gradient flows through the mean here: its derivative is zero.
        deviation = ops.square(view - ops.stop_gradient(mean))
        if weights is not None:
            deviation = deviation * weights
        squares = ops.sum(deviation, axis=axes, keepdims=True)
        channels = self._broadcast_shape[self._channel_axis]
        mean, squares, counts, nonzero_counts = (
            ops.reshape(t, (-1, channels))
            for t in (mean, squares, counts, nonzero_counts)
        )
        variance = squares / nonzero_counts
        if groups == 1 and not self.synchronized:
            # One group on one replica: its statistics are the batch's.
            return mean, variance, mean[0], variance[0]
        pooled_mean, pooled_variance = self._pooled(mean, squares, counts)
        if self.virtual_batch_size is None:  # normalized as one group
            return (
                ops.expand_dims(pooled_mean, 0),
                ops.expand_dims(pooled_variance, 0),
                pooled_mean,
                pooled_variance,
            )
        return mean, variance, pooled_mean, pooled_variance

    def _pooled(self, mean, squares, counts):
        """Mean and biased variance of the union of groups, `(C,)`.

        From each group's mean, sum of squared deviations and count, all
        `(G, C)`; summed over replicas when synchronized.
        """
        total, count = self._all_reduce_sum(
            (ops.sum(mean * counts, axis=0), ops.sum(counts, axis=0))
        )
        pooled_mean = total / count
        spread = squares + counts * ops.square(mean - pooled_mean)
        (pooled_squares,) = self._all_reduce_sum((ops.sum(spread, axis=0),))
        return pooled_mean, pooled_squares / count

    def _ghost_moments(self, x, weights):
        """Statistics of each ghost batch (of any sizes) and of the batch.

        Returns `(mean, variance, pooled_mean, pooled_variance, assign)`:
        per-ghost statistics of shape `(G, C)`, the pooled statistics of the
        whole batch of shape `(C,)`, and the `(B, G)` one-hot matrix that
        assigns each sample to its ghost batch.
        """
        dtype = x.dtype
        ids, num_ghosts = ghost_ids(ops.shape(x)[0], self.virtual_batch_size)
        assign = ops.cast(
            ops.equal(
                ops.expand_dims(ids, 1),
                ops.expand_dims(ops.arange(num_ghosts), 0),
            ),
            dtype,
        )
        assign_t = ops.transpose(assign)
        channels = self._broadcast_shape[self._channel_axis]

        def per_sample_sum(t):  # (B, ..., C, ...) -> (B, C)
            if self._sample_axes:
                t = ops.sum(t, axis=self._sample_axes, keepdims=True)
            return ops.reshape(t, (-1, channels))

        if weights is None:
            per_sample = 1
            for a in self._sample_axes:
                per_sample = per_sample * ops.shape(x)[a]
            counts = ops.sum(assign_t, axis=1, keepdims=True) * ops.cast(
                per_sample, dtype
            )
            sums = ops.matmul(assign_t, per_sample_sum(x))
        else:
            counts = ops.matmul(assign_t, per_sample_sum(weights))
            sums = ops.matmul(assign_t, per_sample_sum(x * weights))
            counts = counts + _MASK_COUNT_FUZZ
        # A replica with an empty batch (a partial last batch split over
        # more replicas than it has samples) has one ghost with a count of
        # 0: give it zero statistics rather than 0 / 0, which would make the
        # pooled statistics of every replica NaN. Other counts are at least 1
        # (or a fully masked ghost's 1e-7, whose sums are 0 either way).
        nonzero_counts = ops.maximum(counts, 1.0)
        mean = sums / nonzero_counts
        sample_mean = ops.reshape(ops.matmul(assign, mean), self._sample_shape)
        deviation = ops.square(x - sample_mean)
        if weights is not None:
            deviation = deviation * weights
        squares = ops.matmul(assign_t, per_sample_sum(deviation))
        variance = squares / nonzero_counts

        # The moving statistics record those of the whole batch (of all
        # replicas when synchronized).
        pooled_mean, pooled_variance = self._pooled(mean, squares, counts)
        return mean, variance, pooled_mean, pooled_variance, assign

    # -- renorm -------------------------------------------------------------

    def current_renorm_clipping(self):
        """The clipping bounds in force now: a dict, possibly empty."""
        if self.renorm_schedule is None:
            return dict(self.renorm_clipping or {})
        return self.renorm_schedule(self.renorm_step)

    def _renorm_correction(self, mean, variance):
        """Renorm's r and d for batch (or per-ghost) statistics, clipped.

        With cumulative renorm statistics (`renorm_momentum=None`), the
        first training step, which has no statistics yet to renormalize
        towards, takes `r = 1` and `d = 0`: the batch is standardized by its
        own statistics, rather than by the initial 0 and 1.
        """
        dtype = mean.dtype
        r, d = renorm_ratios(
            mean,
            ops.sqrt(variance + self.epsilon),
            ops.cast(self.renorm_mean, dtype),
            ops.cast(self.renorm_stddev, dtype),
            self.epsilon,
        )
        r, d = clip_renorm(r, d, self.current_renorm_clipping())
        if self.renorm_momentum is None:
            first = ops.equal(self.num_batches_tracked, 0)
            r = ops.where(first, ops.ones_like(r), r)
            d = ops.where(first, ops.zeros_like(d), d)
        # The backward pass needs r and d, which read the renorm statistics
        # (and counters) that this call then updates in place.
        # torch.compile's partitioner recomputes cheap element-wise ops in
        # the backward from the forward's inputs, and would read the updated
        # values: silently wrong gradients, or an error for a tensor
        # "modified by an inplace operation". A concatenation is not
        # recomputed, so r and d are saved as the forward computed them. A
        # no-op elsewhere.
        r, d = ops.unstack(ops.stack([r, d]))
        return r, d

    # -- moving statistics ----------------------------------------------------

    def _applies(self, mean, variance, training):
        """Whether the update applies: True, or a boolean scalar tensor.

        Not for a batch with non-finite statistics when `skip_nonfinite`,
        nor when `training` is a tensor that is False.
        """
        if not self.skip_nonfinite:
            return training
        finite = ops.logical_and(
            ops.all(ops.isfinite(mean)), ops.all(ops.isfinite(variance))
        )
        if training is True:
            return finite
        return ops.logical_and(finite, training)

    def _moved(self, old_mean, old_spread, mean, variance, momentum, count):
        """A mean and its spread after one batch of `mean`, `variance`.

        The spread is the variance, or with renorm the standard deviation
        `sqrt(variance + epsilon)`, as Keras keeps them. With a float
        `momentum`, Keras's moving averages (with renorm, of the batch
        standard deviations); with `None`, the cumulative average of the
        `count` batches seen, this one included. Returns `(new_mean,
        new_variance, new_stddev)`, `new_stddev` None without renorm.
        """
        dtype = mean.dtype
        old_mean = ops.cast(old_mean, dtype)
        old_spread = ops.cast(old_spread, dtype)
        if momentum is not None:
            new_mean = moving_average(old_mean, mean, momentum)
            if not self.renorm:
                new_variance = moving_average(old_spread, variance, momentum)
                return new_mean, new_variance, None
            stddev = ops.sqrt(variance + self.epsilon)
            stddev = moving_average(old_spread, stddev, momentum)
            # As Keras: ReLU against rounding below zero.
            return new_mean, ops.relu(stddev * stddev - self.epsilon), stddev
        old_variance = old_spread
        if self.renorm:
            old_variance = ops.relu(old_spread * old_spread - self.epsilon)
        new_mean, new_variance = cumulative_average(
            old_mean, old_variance, mean, variance, count
        )
        if not self.renorm:
            return new_mean, new_variance, None
        return new_mean, new_variance, ops.sqrt(new_variance + self.epsilon)

    def _update_statistics(self, mean, variance, training):
        """Updates the moving (and renorm) statistics with a batch's.

        Skipped for a batch with non-finite statistics when
        `skip_nonfinite`, and when `training` is a tensor that is False.
        The step counter `renorm_step` counts every training step; the
        counter `num_batches_tracked`, the updates applied.
        """
        apply = self._applies(mean, variance, training)

        def assign(variable, value):
            value = ops.cast(value, variable.dtype)
            if apply is not True:
                value = ops.where(apply, value, ops.convert_to_tensor(variable))
            variable.assign(value)

        count = None
        if self.num_batches_tracked is not None:
            count = ops.cast(self.num_batches_tracked, mean.dtype) + 1.0
        if self.renorm:
            new_mean, _, new_stddev = self._moved(
                self.renorm_mean,
                self.renorm_stddev,
                mean,
                variance,
                self.renorm_momentum,
                count,
            )
            assign(self.renorm_mean, new_mean)
            assign(self.renorm_stddev, new_stddev)
        spread = self.moving_stddev if self.renorm else self.moving_variance
        new_mean, new_variance, new_stddev = self._moved(
            self.moving_mean, spread, mean, variance, self.momentum, count
        )
        assign(self.moving_mean, new_mean)
        assign(self.moving_variance, new_variance)
        if self.renorm:
            assign(self.moving_stddev, new_stddev)
        if self.num_batches_tracked is not None:
            applied = 1 if apply is True else ops.cast(apply, "int32")
            self.num_batches_tracked.assign(self.num_batches_tracked + applied)
        if self.renorm_step is not None:
            # The schedule counts training steps, bad batches included.
            step = 1 if training is True else ops.cast(training, "int32")
            self.renorm_step.assign(self.renorm_step + step)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        if self.renorm_schedule is not None:
            config["renorm_clipping"] = keras.saving.serialize_keras_object(
                self.renorm_schedule
            )
        config["virtual_batch_size"] = self.virtual_batch_size
        config["skip_nonfinite"] = self.skip_nonfinite
        config["fused"] = self.fused
        return config
