"""The keras-tuner tuner class behind a short name."""

from bn_keras.registry import TUNERS


def get_tuner(name):
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
        ImportError: for `"bayesian"` without scipy, which keras-tuner's
            Bayesian optimization needs.

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
        try:
            import scipy  # noqa: F401
        except ImportError:
            raise ImportError(
                "The bayesian tuner needs scipy: "
                "pip install 'bn-keras[bayesian]'. Received: name='bayesian'"
            ) from None
    return {
        "random": keras_tuner.RandomSearch,
        "grid": ResumableGridSearch,
        "hyperband": keras_tuner.Hyperband,
        "bayesian": keras_tuner.BayesianOptimization,
    }[name]
