"""Warm-up schedule for batch renormalization's clipping bounds."""

import numbers

import keras
from keras import ops

from bn_keras._validation import check_nonnegative_int
from bn_keras._validation import check_number




@keras.saving.register_keras_serializable(package="bn_keras")
class RenormClipping:
    """Warm-up schedule for the clipping bounds of batch renormalization.

    Batch renormalization corrects the batch statistics towards the moving
    ones with `r = sigma_B / sigma` and `d = (mu_B - mu) / sigma`, clipped to
    `[rmin, rmax]` and `[-dmax, dmax]`. The paper starts with `rmax = 1` and
    `dmax = 0` (plain batch normalization) and then relaxes both bounds
    linearly. This schedule reproduces that recipe:

    - for `step < warmup_steps`: `rmax = 1`, `dmax = 0`;
    - `rmax` then grows linearly to its final value, reached at `rmax_steps`;
    - `dmax` grows linearly to its final value, reached at `dmax_steps`;
    - `rmin` is always `1 / rmax`.

    Pass an instance as `renorm_clipping` to
    `bn_keras.layers.BatchNormalization(renorm=True, ...)`: the layer then
    keeps a training-step counter (a non-trainable weight saved with the
    model) and evaluates the schedule at every training step.

    Args:
        rmax: Final value of `rmax`, at least 1. Defaults to `3.0`.
        dmax: Final value of `dmax`, non-negative. Defaults to `5.0`.
        warmup_steps: Number of steps during which `rmax = 1` and
            `dmax = 0`. Defaults to `5000`.
        rmax_steps: Step at which `rmax` reaches its final value, at least
            `warmup_steps`. Defaults to `40000`.
        dmax_steps: Step at which `dmax` reaches its final value, at least
            `warmup_steps`. Defaults to `25000`.

    Call arguments:
        step: The training step, a Python number or a scalar tensor.

    Returns:
        A dict with keys `"rmin"`, `"rmax"` and `"dmax"`: Python floats for
        a Python `step`, float32 scalar tensors for a tensor `step`.

    Reference:

    - [Ioffe, 2017](https://arxiv.org/abs/1702.03275), section 4.

    Example:

    >>> schedule = bn_keras.layers.RenormClipping()
    >>> schedule(0)
    {'rmin': 1.0, 'rmax': 1.0, 'dmax': 0.0}
    >>> schedule(40000)["rmax"]
    3.0
    """

    def __init__(
        self,
        rmax=3.0,
        dmax=5.0,
        warmup_steps=5000,
        rmax_steps=40000,
        dmax_steps=25000,
    ):
        check_number("rmax", rmax, 1.0)
        check_number("dmax", dmax, 0.0)
        for name, value in (
            ("warmup_steps", warmup_steps),
            ("rmax_steps", rmax_steps),
            ("dmax_steps", dmax_steps),
        ):
            check_nonnegative_int(name, value, "integer number of steps")
        for name, value in (("rmax_steps", rmax_steps), ("dmax_steps", dmax_steps)):
            if value < warmup_steps:
                raise ValueError(
                    f"Argument `{name}` (the step at which the bound reaches "
                    "its final value) must be at least `warmup_steps`. "
                    f"Received: {name}={value}, warmup_steps={warmup_steps}"
                )
        self.rmax = float(rmax)
        self.dmax = float(dmax)
        self.warmup_steps = int(warmup_steps)
        self.rmax_steps = int(rmax_steps)
        self.dmax_steps = int(dmax_steps)

    def _progress(self, step, end_step):
        """Fraction of the ramp done at `step`: 0 before, 1 after."""
        span = end_step - self.warmup_steps
        if isinstance(step, numbers.Real):
            if span == 0:
                return 1.0 if step >= end_step else 0.0
            return min(max((step - self.warmup_steps) / span, 0.0), 1.0)
        step = ops.cast(step, "float32")
        if span == 0:
            return ops.cast(ops.greater_equal(step, end_step), "float32")
        return ops.clip((step - self.warmup_steps) / span, 0.0, 1.0)

    def __call__(self, step):
        rmax = 1.0 + (self.rmax - 1.0) * self._progress(step, self.rmax_steps)
        dmax = self.dmax * self._progress(step, self.dmax_steps)
        return {"rmin": 1.0 / rmax, "rmax": rmax, "dmax": dmax}

    def get_config(self):
        return {
            "rmax": self.rmax,
            "dmax": self.dmax,
            "warmup_steps": self.warmup_steps,
            "rmax_steps": self.rmax_steps,
            "dmax_steps": self.dmax_steps,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return (
            isinstance(other, RenormClipping)
            and self.get_config() == other.get_config()
        )

    def __hash__(self):
        return hash(tuple(sorted(self.get_config().items())))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"RenormClipping({args})"
