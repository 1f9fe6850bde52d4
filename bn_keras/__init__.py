"""bn-keras: batch normalization done right for Keras 3.

`bn_keras.tuner` is loaded on first use (`bn_keras.tuner.BNSearchMLP`, or
`import bn_keras.tuner`): it imports keras-tuner, which the layers, the
callbacks, the model functions and `bn-keras inspect` do without.
"""

__version__ = "0.1.0"

from bn_keras import callbacks
from bn_keras import layers
from bn_keras import models
from bn_keras import registry
from bn_keras.models import convert_batchnorm
from bn_keras.models import find_batchnorm
from bn_keras.models import fold_batchnorm
from bn_keras.models import freeze_batchnorm
from bn_keras.models import insert_batchnorm
from bn_keras.models import recalibrate

# Submodules that `__getattr__` imports on first access.
_LAZY_SUBMODULES = ("tuner",)

__all__ = [
    "__version__",
    "callbacks",
    "convert_batchnorm",
    "find_batchnorm",
    "fold_batchnorm",
    "freeze_batchnorm",
    "insert_batchnorm",
    "layers",
    "models",
    "recalibrate",
    "registry",
    "tuner",
]


def __getattr__(name):
    # PEP 562: called only for names the module does not have yet. Once
    # imported, the submodule is an attribute and this is not called again.
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))
