"""The keras-tuner tuner class behind a short name."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bn_keras._optional import require
from bn_keras.registry import TUNERS

if TYPE_CHECKING:
    import keras_tuner


def get_tuner(name: str) -> type[keras_tuner.Tuner]:
    """Returns the tuner class for `name`.

    `"grid"` is `bn_keras.tuner.ResumableGridSearch` (keras-tuner's
    `GridSearch`, resumable); `"random"`, `"hyperband"` and `"bayesian"` are
    keras-tuner's `RandomSearch`, `Hyperband` and `BayesianOptimization`.

    Args:
        name: One of `"random"`, `"grid"`, `"hyperband"`, `"bayesian"`.

    Returns:
        A subclass of `keras_tuner.Tuner`.

    Raises:
        ValueError: for an unknown name.
        ModuleNotFoundError: for `"bayesian"` without scipy, which
            keras-tuner's Bayesian optimization needs (the `tuner` extra
            brings it).

    Example:

    >>> bn_keras.tuner.get_tuner("grid").__name__
    'ResumableGridSearch'
    """
    if name not in TUNERS:
        raise ValueError(
            f"Argument `name` must be one of {list(TUNERS)}. "
            f"Received: name={name!r}"
        )
    import keras_tuner

    from bn_keras.tuner.resumable_grid_search import ResumableGridSearch

    if name == "bayesian":
        require(["scipy"], "The bayesian tuner")
    return {
        "random": keras_tuner.RandomSearch,
        "grid": ResumableGridSearch,
        "hyperband": keras_tuner.Hyperband,
        "bayesian": keras_tuner.BayesianOptimization,
    }[name]
