"""Optional dependencies, and the extra of bn-keras that installs each.

The layers, the model functions and the monitor need Keras, NumPy and
TensorBoard only. The rest comes with an extra (`setup.cfg`), and a part
that needs a missing one says which extra to install:

>>> from bn_keras import _optional
>>> _optional.missing_message(["numpy"], "bn_keras.layers") is None
True
>>> print(_optional.missing_message(["not_installed"], "a feature"))
a feature needs not_installed, which is not installed.
"""

import importlib.util

#: What each optional module is installed by: its distribution on the
#: package index, and the extra of bn-keras that brings it.
EXTRAS = {
    "keras_tuner": ("keras-tuner", "tuner"),
    "scipy": ("scipy", "tuner"),
    "sklearn": ("scikit-learn", "cli"),
    "matplotlib": ("matplotlib", "cli"),
    "tensorflow": ("tensorflow", "tensorflow"),
    "jax": ("jax", "jax"),
    "torch": ("torch", "torch"),
}


def is_installed(module):
    """Whether `module` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_message(modules, feature, extra=None):
    """`None` when every module of `modules` is installed; otherwise one
    sentence that says which are missing and how to install them: with
    `extra`, or else with the extras of `EXTRAS`."""
    missing = [module for module in modules if not is_installed(module)]
    if not missing:
        return None
    names = [EXTRAS.get(module, (module, None))[0] for module in missing]
    extras = {EXTRAS[module][1] for module in missing if module in EXTRAS}
    if extra is not None:
        extras = {extra}
    one = len(names) == 1
    listed = " and ".join(
        [", ".join(names[:-1]), names[-1]] if names[:-1] else names
    )
    message = (
        f"{feature} needs {listed}, which "
        f"{'is' if one else 'are'} not installed."
    )
    if extras:
        message += (
            f" Install {'it' if one else 'them'} with: "
            f"pip install 'bn-keras[{','.join(sorted(extras))}]'"
        )
    return message


def require(modules, feature, extra=None):
    """Raises `ModuleNotFoundError` naming the extra to install when one of
    `modules` is missing."""
    message = missing_message(modules, feature, extra)
    if message is not None:
        raise ModuleNotFoundError(message)
