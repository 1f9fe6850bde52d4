"""bn-keras: batch normalization done right for Keras 3.

`bn_keras.tuner` is loaded on first use (`bn_keras.tuner.BNSearchMLP`, or
`import bn_keras.tuner`): it imports keras-tuner, which the layers, the
callbacks, the model functions and `bn-keras inspect` do without.

Started as the `bn-keras` command (or `python -m bn_keras`), the package
loads every part on first use: `--help`, `--version` and usage errors then
answer without importing Keras and TensorFlow.
"""

__version__ = "0.1.0"


def _started_as_command():
    """Whether this process is `bn-keras ...` or `python -m bn_keras ...`."""
    import os
    import sys

    script = os.path.basename(sys.argv[0]) if sys.argv else ""
    if script.removesuffix(".exe").removesuffix("-script.py") == "bn-keras":
        return True
    argv = getattr(sys, "orig_argv", [])
    return any(
        arg == "-mbn_keras"
        or (arg == "-m" and argv[i + 1 : i + 2] == ["bn_keras"])
        for i, arg in enumerate(argv)
    )


def _interrupted_while_starting(signum, frame):
    """Ctrl-C before the command has started: a line, no traceback
    (`bn_keras.cli.main` then handles Ctrl-C itself)."""
    import os
    import sys

    sys.stderr.write("bn-keras: interrupted\n")
    os._exit(130)


if _started_as_command():
    import signal

    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupted_while_starting)
else:
    from bn_keras import callbacks
    from bn_keras import diagnosis
    from bn_keras import layers
    from bn_keras import models
    from bn_keras import registry
    from bn_keras.diagnosis import diagnose
    from bn_keras.models import convert_batchnorm
    from bn_keras.models import find_batchnorm
    from bn_keras.models import fold_batchnorm
    from bn_keras.models import freeze_batchnorm
    from bn_keras.models import insert_batchnorm
    from bn_keras.models import recalibrate
    from bn_keras.models import train_inference_gap

# What `__getattr__` imports on first access: `tuner`; started as the
# command, the other submodules, `diagnose` and the functions of
# `bn_keras.models` too.
_SUBMODULES = (
    "callbacks",
    "diagnosis",
    "layers",
    "models",
    "registry",
    "tuner",
)

__all__ = [
    "__version__",
    "callbacks",
    "convert_batchnorm",
    "diagnose",
    "diagnosis",
    "find_batchnorm",
    "fold_batchnorm",
    "freeze_batchnorm",
    "insert_batchnorm",
    "layers",
    "models",
    "recalibrate",
    "registry",
    "train_inference_gap",
    "tuner",
]


def __getattr__(name):
    # PEP 562: called only for names the module does not have yet. Once
    # imported, the submodule is an attribute and this is not called again.
    import importlib

    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name == "diagnose":
        return importlib.import_module(f"{__name__}.diagnosis").diagnose
    if name in __all__:  # a function of bn_keras.models
        return getattr(importlib.import_module(f"{__name__}.models"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
