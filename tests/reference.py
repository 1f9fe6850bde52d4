"""A NumPy reference for batch normalization, written from the papers.

- Batch normalization (Ioffe and Szegedy, 2015, arXiv 1502.03167), with the
  conventions of `keras.layers.BatchNormalization`: biased batch variance,
  `moving = moving * momentum + statistic * (1 - momentum)`.
- Ghost batch normalization (Hoffer et al., 2017, arXiv 1705.08741):
  consecutive chunks of `m` samples, each normalized with its own
  statistics. A last chunk of one sample is merged into its neighbour. The
  moving statistics are updated once per step with the pooled statistics of
  the whole batch.
- Batch renormalization (Ioffe, 2017, arXiv 1702.03275), as Keras implements
  it: `r = sigma_B / sigma`, `d = (mu_B - mu) / sigma` with
  `sigma = max(renorm_stddev, sqrt(epsilon))`, clipped to `[rmin, rmax]` and
  `[-dmax, dmax]`; `y = gamma * (x_hat * r + d) + beta`. The renorm
  statistics move with `renorm_momentum`; the inference statistics keep a
  moving standard deviation and `moving_variance = relu(stddev^2 - eps)`.
  With ghost batches, `r` and `d` are computed per ghost batch.
- The paper's warm-up schedule for `rmax` and `dmax` (section 4).
- Cumulative statistics (`momentum=None`, PyTorch's `momentum=None`): the
  statistics of all the batches seen, each weighing one, written in closed
  form as the pooled mean and variance of groups: `k` earlier batches
  summarized by `(M0, V0)` and the batches since, `(mu_i, var_i)`:
  `M = (k * M0 + sum(mu_i)) / (k + m)` and
  `V = (k * (V0 + (M0 - M)^2) + sum(var_i + (mu_i - M)^2)) / (k + m)`.
  With renorm, standard deviations are `sqrt(V + epsilon)`; with
  `renorm_momentum=None`, the first step (`k + m = 0` before it) uses
  `r = 1`, `d = 0`.

Everything is computed in float64 with plain loops, independently of
`bn_keras`; tests compare the layer with it.
"""

import numpy as np

# Keras's masked moments divide by `count + keras.config.epsilon()`.
MASK_COUNT_FUZZ = 1e-7


def renorm_clipping_at(
    step,
    rmax=3.0,
    dmax=5.0,
    warmup_steps=5000,
    rmax_steps=40000,
    dmax_steps=25000,
):
    """The clipping bounds of the paper's schedule at `step`.

    `rmax = 1` and `dmax = 0` before `warmup_steps`; each bound then grows
    linearly to reach its final value at its own step, and stays there.
    `rmin = 1 / rmax`.
    """

    def ramp(final, end_step, start_value):
        if step < warmup_steps:
            return start_value
        if step >= end_step:
            return final
        done = (step - warmup_steps) / (end_step - warmup_steps)
        return start_value + (final - start_value) * done

    r = ramp(rmax, rmax_steps, 1.0)
    return {"rmin": 1.0 / r, "rmax": r, "dmax": ramp(dmax, dmax_steps, 0.0)}


def ghost_chunks(batch_size, virtual_batch_size):
    """`(start, stop)` of each ghost batch: consecutive chunks of `m`.

    The last chunk holds the remainder; if it holds a single sample (and is
    not the only chunk) it is merged into the chunk before it.
    """
    if virtual_batch_size is None:
        return [(0, batch_size)]
    chunks = []
    start = 0
    while start < batch_size:
        stop = min(start + virtual_batch_size, batch_size)
        chunks.append((start, stop))
        start = stop
    if len(chunks) > 1 and chunks[-1][1] - chunks[-1][0] == 1:
        last = chunks.pop()
        chunks[-1] = (chunks[-1][0], last[1])
    return chunks


def _as_rows(x, axis, mask):
    """`x` as `(N, C)` rows of samples and the matching `(N, 1)` weights.

    The mask follows Keras: a tensor of rank `x.ndim - 1`, broadcast along
    the last axis of `x`, whatever the features axis.
    """
    x = np.asarray(x, np.float64)
    if mask is None:
        weights = np.ones_like(x)
    else:
        weights = np.broadcast_to(
            np.asarray(mask, np.float64)[..., None], x.shape
        )
    axis = axis % x.ndim
    channels = x.shape[axis]
    rows = np.moveaxis(x, axis, -1).reshape(-1, channels)
    w = np.moveaxis(weights, axis, -1).reshape(-1, channels)
    return rows, w


def moments(x, axis=-1, mask=None):
    """Mean and biased variance per channel over every other axis."""
    rows, w = _as_rows(x, axis, mask)
    count = w.sum(axis=0)
    if mask is not None:
        count = count + MASK_COUNT_FUZZ
    mean = (rows * w).sum(axis=0) / count
    variance = (w * (rows - mean) ** 2).sum(axis=0) / count
    return mean, variance


def _channel_shape(x, axis):
    shape = [1] * x.ndim
    shape[axis % x.ndim] = x.shape[axis]
    return shape


class ReferenceBatchNorm:
    """Plain, ghost and renormalized batch normalization in NumPy.

    Args mirror `bn_keras.layers.BatchNormalization`'s. `renorm_clipping` is
    None, a dict of fixed bounds, or a callable `step -> dict` (a schedule
    evaluated at the number of training steps taken before this one).
    """

    def __init__(
        self,
        channels,
        axis=-1,
        momentum=0.99,
        epsilon=1e-3,
        renorm=False,
        renorm_clipping=None,
        renorm_momentum=0.99,
        virtual_batch_size=None,
        skip_nonfinite=True,
    ):
        self.axis = axis
        self.momentum = momentum
        self.epsilon = epsilon
        self.renorm = renorm
        self.renorm_clipping = renorm_clipping
        self.renorm_momentum = renorm_momentum
        self.virtual_batch_size = virtual_batch_size
        self.skip_nonfinite = skip_nonfinite
        self.gamma = np.ones(channels)
        self.beta = np.zeros(channels)
        self.moving_mean = np.zeros(channels)
        self.moving_variance = np.ones(channels)
        self.moving_stddev = np.ones(channels)
        self.renorm_mean = np.zeros(channels)
        self.renorm_stddev = np.ones(channels)
        self.step = 0
        # Cumulative statistics: the groups before (count, mean, variance)
        # per statistic set, and the (mean, variance) of each batch since.
        self.num_batches_tracked = 0
        self._prior = {}
        self._batches = []

    def set_state(self, **values):
        """Sets parameters and statistics by weight name (`gamma`, `beta`,
        `moving_mean`, ..., and `renorm_step`, the number of steps taken)."""
        for name, value in values.items():
            if name == "renorm_step":
                self.step = int(value)
            elif name == "num_batches_tracked":
                self.num_batches_tracked = int(value)
            elif hasattr(self, name):
                setattr(self, name, np.array(value, np.float64))
            else:
                raise KeyError(f"Unknown weight {name!r}")
        self._prior, self._batches = {}, []

    def state(self):
        names = ["moving_mean", "moving_variance"]
        if self.renorm:
            names += ["moving_stddev", "renorm_mean", "renorm_stddev"]
        if self.momentum is None or (
            self.renorm and self.renorm_momentum is None
        ):
            names.append("num_batches_tracked")
        return {name: getattr(self, name) for name in names}

    def clipping(self):
        if self.renorm_clipping is None:
            return {}
        if callable(self.renorm_clipping):
            return self.renorm_clipping(self.step)
        return dict(self.renorm_clipping)

    def _normalize(self, x, mean, variance, r=None, d=None):
        shape = _channel_shape(x, self.axis)
        x_hat = (x - mean.reshape(shape)) / np.sqrt(
            variance.reshape(shape) + self.epsilon
        )
        if r is not None:
            x_hat = x_hat * r.reshape(shape) + d.reshape(shape)
        return self.gamma.reshape(shape) * x_hat + self.beta.reshape(shape)

    def _renorm_correction(self, mean, variance):
        sigma = np.maximum(self.renorm_stddev, np.sqrt(self.epsilon))
        r = np.sqrt(variance + self.epsilon) / sigma
        d = (mean - self.renorm_mean) / sigma
        bounds = self.clipping()
        if bounds.get("rmin") is not None:
            r = np.maximum(r, bounds["rmin"])
        if bounds.get("rmax") is not None:
            r = np.minimum(r, bounds["rmax"])
        if bounds.get("dmax") is not None:
            d = np.clip(d, -bounds["dmax"], bounds["dmax"])
        if self.renorm_momentum is None and self.num_batches_tracked == 0:
            r, d = np.ones_like(r), np.zeros_like(d)
        return r, d

    def inference(self, x):
        x = np.asarray(x, np.float64)
        return self._normalize(x, self.moving_mean, self.moving_variance)

    def train_step(self, x, mask=None):
        """Training-mode output for `x`; then updates the statistics."""
        x = np.asarray(x, np.float64)
        out = np.empty_like(x)
        for start, stop in ghost_chunks(len(x), self.virtual_batch_size):
            chunk = x[start:stop]
            chunk_mask = None if mask is None else mask[start:stop]
            mean, variance = moments(chunk, self.axis, chunk_mask)
            r = d = None
            if self.renorm:
                r, d = self._renorm_correction(mean, variance)
            out[start:stop] = self._normalize(chunk, mean, variance, r, d)
        self._update(*moments(x, self.axis, mask))
        self.step += 1
        return out

    def _update(self, mean, variance):
        finite = np.all(np.isfinite(mean)) and np.all(np.isfinite(variance))
        if self.skip_nonfinite and not finite:
            return
        if self.momentum is None or (
            self.renorm and self.renorm_momentum is None
        ):
            self._remember_prior()
            self._batches.append((mean, variance))
            self.num_batches_tracked += 1

        def moved(old, new, momentum):
            return old * momentum + new * (1.0 - momentum)

        stddev = np.sqrt(variance + self.epsilon)
        if self.renorm and self.renorm_momentum is None:
            self.renorm_mean, renorm_variance = self._pooled("renorm")
            self.renorm_stddev = np.sqrt(renorm_variance + self.epsilon)
        elif self.renorm:
            self.renorm_mean = moved(
                self.renorm_mean, mean, self.renorm_momentum
            )
            self.renorm_stddev = moved(
                self.renorm_stddev, stddev, self.renorm_momentum
            )
        if self.momentum is None:
            self.moving_mean, self.moving_variance = self._pooled("moving")
            self.moving_stddev = np.sqrt(self.moving_variance + self.epsilon)
            return
        self.moving_mean = moved(self.moving_mean, mean, self.momentum)
        if not self.renorm:
            self.moving_variance = moved(
                self.moving_variance, variance, self.momentum
            )
            return
        self.moving_stddev = moved(self.moving_stddev, stddev, self.momentum)
        self.moving_variance = np.maximum(
            self.moving_stddev**2 - self.epsilon, 0.0
        )

    def _remember_prior(self):
        """Before the first batch since the state was set: the statistics
        in force summarize `num_batches_tracked` earlier batches."""
        if self._prior:
            return
        k = self.num_batches_tracked
        # A renorm layer keeps standard deviations: its variances derive.
        eps = self.epsilon
        moving_variance = self.moving_variance
        if self.renorm:
            moving_variance = np.maximum(self.moving_stddev**2 - eps, 0.0)
        self._prior["moving"] = (k, self.moving_mean, moving_variance)
        renorm_variance = np.maximum(self.renorm_stddev**2 - eps, 0.0)
        self._prior["renorm"] = (k, self.renorm_mean, renorm_variance)

    def _pooled(self, which):
        """Mean and variance of the prior group and the batches since."""
        k, prior_mean, prior_variance = self._prior[which]
        means = np.array([m for m, _ in self._batches])
        variances = np.array([v for _, v in self._batches])
        total = k + len(self._batches)
        mean = (k * prior_mean + means.sum(axis=0)) / total
        spread = k * (prior_variance + (prior_mean - mean) ** 2)
        spread = spread + (variances + (means - mean) ** 2).sum(axis=0)
        return mean, spread / total
