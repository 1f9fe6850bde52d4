"""The `>>>` examples in the docstrings of every module of bn_keras run."""

import doctest
import importlib
import inspect
import os
import pkgutil
import re
import tempfile

import keras
import keras_tuner
import numpy as np
import pytest

import bn_keras

MODULES = ["bn_keras"] + [
    info.name
    for info in pkgutil.walk_packages(bn_keras.__path__, prefix="bn_keras.")
]

# What the examples use without importing it.
GLOBS = {
    "bn_keras": bn_keras,
    "keras": keras,
    "keras_tuner": keras_tuner,
    "np": np,
    "os": os,
    "tempfile": tempfile,
}

_PROMPT = re.compile(r"^\s*>>>", re.MULTILINE)


def test_every_module_is_collected():
    # One module for each file of the package, subpackages included.
    root = os.path.dirname(os.path.dirname(bn_keras.__file__))
    files = []
    for folder, _, names in os.walk(bn_keras.__path__[0]):
        for file in names:
            if file.endswith(".py"):
                path = os.path.relpath(os.path.join(folder, file), root)
                files.append(path[: -len(".py")].replace(os.sep, "."))
    expected = {n.removesuffix(".__init__") for n in files}
    assert sorted(MODULES) == sorted(expected)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    )
    for test in finder.find(module, name, globs=dict(GLOBS)):
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0
    # Every `>>>` line of the module's source ran: none sits where the
    # finder does not look (a private module's function imported elsewhere,
    # a docstring built at run time).
    assert results.attempted == len(_PROMPT.findall(inspect.getsource(module)))
