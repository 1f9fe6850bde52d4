"""Shared pieces of the command-line tests."""

import csv
import os
import subprocess
import sys

from tensorboard.backend.event_processing.event_accumulator import TENSORS
from tensorboard.backend.event_processing.event_accumulator import (
    EventAccumulator,
)
from tensorboard.util import tensor_util

from bn_keras.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_cli(capsys, *argv):
    """Runs `bn-keras *argv` in-process: `(exit status, stdout, stderr)`."""
    capsys.readouterr()
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def read_scalars(run_dir):
    """Every scalar summary in `run_dir`: `{tag: {step: float}}`."""
    accumulator = EventAccumulator(run_dir, size_guidance={TENSORS: 0})
    accumulator.Reload()
    scalars = {}
    for tag in accumulator.Tags()["tensors"]:
        values = {
            event.step: tensor_util.make_ndarray(event.tensor_proto)
            for event in accumulator.Tensors(tag)
        }
        if all(v.ndim == 0 and v.dtype.kind == "f" for v in values.values()):
            scalars[tag] = {step: float(v) for step, v in values.items()}
    return scalars


def event_files(folder):
    return [
        name for name in os.listdir(folder) if name.startswith("events.out")
    ]


def read_csv(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def assert_png(path, width=None, height=None):
    """A real PNG image: signature, nonzero size and, if given, its size."""
    with open(path, "rb") as file:
        head = file.read(24)
    assert head[:8] == PNG_SIGNATURE
    assert os.path.getsize(path) > 1000
    # IHDR: width and height, big-endian, at bytes 16-24.
    if width is not None:
        assert int.from_bytes(head[16:20], "big") == width
    if height is not None:
        assert int.from_bytes(head[20:24], "big") == height


def session_dirs(logdir, prefix):
    return sorted(
        name for name in os.listdir(logdir) if name.startswith(prefix + "-")
    )


REPO = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)


def entry_point():
    """The command line of the installed `bn-keras` script beside this
    Python (CI installs the package; while developing, `PYTHONPATH` points
    it at this checkout), or `python -m bn_keras` without one."""
    script = os.path.join(os.path.dirname(sys.executable), "bn-keras")
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-m", "bn_keras"]


def entry_point_env(**extra):
    """The environment of a user's shell: this checkout first on the
    path, none of the test session's TensorFlow settings."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in [REPO, env.get("PYTHONPATH", "")] if p
    )
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    env.update({key: str(value) for key, value in extra.items()})
    return env


def run_entry_point(*argv, timeout=600, **env):
    """Runs `bn-keras *argv` in a subprocess: `CompletedProcess`."""
    return subprocess.run(
        [*entry_point(), *[str(a) for a in argv]],
        env=entry_point_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


#: TensorFlow's C++ start-up lines, which `bn-keras` keeps off stderr.
TF_STARTUP_NOISE = (
    "I0000 ",
    "E0000 ",
    "W0000 ",
    "absl::InitializeLog",
    "cpu_feature_guard",
)


def imported_modules(stderr):
    """The modules a `PYTHONPROFILEIMPORTTIME=1` run imported, from its
    stderr."""
    modules = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            modules.add(line.rsplit("|", 1)[1].strip())
    return modules


def without_import_times(stderr):
    return "\n".join(
        line
        for line in stderr.splitlines()
        if not line.startswith("import time:")
    )
