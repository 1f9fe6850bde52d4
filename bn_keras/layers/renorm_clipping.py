"""Warm-up schedule for batch renormalization's clipping bounds."""

from __future__ import annotations

import numbers
from typing import Any

import keras
from keras import ops

from bn_keras._validation import check_nonnegative_int
from bn_keras._validation import check_number
from bn_keras._validation import check_positive_int


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

    For a run shorter than the paper's, `scaled` compresses the schedule:

    >>> short = schedule.scaled(800)
    >>> short.warmup_steps, short.dmax_steps, short.rmax_steps
    (100, 500, 800)
    """

    def __init__(
        self,
        rmax: float = 3.0,
        dmax: float = 5.0,
        warmup_steps: int = 5000,
        rmax_steps: int = 40000,
        dmax_steps: int = 25000,
    ) -> None:
        check_number("rmax", rmax, 1.0)
        check_number("dmax", dmax, 0.0)
        for name, value in (
            ("warmup_steps", warmup_steps),
            ("rmax_steps", rmax_steps),
            ("dmax_steps", dmax_steps),
        ):
            check_nonnegative_int(name, value, "integer number of steps")
        for name, value in (
            ("rmax_steps", rmax_steps),
            ("dmax_steps", dmax_steps),
        ):
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

    def __call__(self, step: Any) -> dict[str, Any]:
        rmax = 1.0 + (self.rmax - 1.0) * self._progress(step, self.rmax_steps)
        dmax = self.dmax * self._progress(step, self.dmax_steps)
        return {"rmin": 1.0 / rmax, "rmax": rmax, "dmax": dmax}

    def scaled(self, total_steps: int) -> RenormClipping:
        """This schedule compressed (or stretched) to a run of `total_steps`.

        The paper's step counts belong to its 40,000-step ramps on
        ImageNet; a run of a few hundred steps would never leave the
        warm-up. `scaled` keeps the schedule's shape and its final bounds
        and moves its end, the step at which both bounds are final
        (`max(rmax_steps, dmax_steps)`), to `total_steps`: every step count
        is multiplied by `total_steps / end` and rounded down. A schedule
        with a warm-up keeps at least one step of it (plain batch
        normalization first, as in the paper), and neither ramp ends
        before the warm-up does.

        With the default (the paper's) schedule, the run is plain batch
        normalization for its first eighth, `dmax` is final at five eighths
        and `rmax` at the last step: `warmup_steps = total_steps // 8`,
        `dmax_steps = 5 * total_steps // 8`, `rmax_steps = total_steps`.

        Args:
            total_steps: The number of training steps of the run, a
                positive integer.

        Returns:
            A new `RenormClipping` with the same `rmax` and `dmax`. A
            schedule without steps (all three are 0) is returned as a copy.
        """
        total_steps = check_positive_int("total_steps", total_steps)
        end = max(self.rmax_steps, self.dmax_steps)
        if end == 0:
            return RenormClipping(**self.get_config())
        warmup = self.warmup_steps * total_steps // end
        if self.warmup_steps:
            warmup = max(1, warmup)
        return RenormClipping(
            rmax=self.rmax,
            dmax=self.dmax,
            warmup_steps=warmup,
            rmax_steps=max(warmup, self.rmax_steps * total_steps // end),
            dmax_steps=max(warmup, self.dmax_steps * total_steps // end),
        )

    def get_config(self) -> dict[str, Any]:
        return {
            "rmax": self.rmax,
            "dmax": self.dmax,
            "warmup_steps": self.warmup_steps,
            "rmax_steps": self.rmax_steps,
            "dmax_steps": self.dmax_steps,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> RenormClipping:
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
