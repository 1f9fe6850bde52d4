"""Shared pieces of the command-line tests."""

import csv
import os

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
